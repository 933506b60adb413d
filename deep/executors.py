"""Executors: who measures the tasks of a queue (:class:`deep.runner.RunTask`), and where.

(About 440 lines: three executors, one class each, sharing the worker protocol and the watch of
their processes that sits here.)

* ``local`` with ``--jobs N``: N worker processes on this machine (``python -m deep.executors -``),
  pinned round-robin to the GPUs (``CUDA_VISIBLE_DEVICES``), or sharing the CPU's threads. Each
  reads its queue from its stdin, whose other end the parent holds: no queue file is written
  anywhere, and a worker whose parent is gone (killed, even by SIGKILL) sees its stdin close and
  ends itself (on Linux the kernel's parent-death signal too), never running on alone. A worker
  killed on its own stops nothing else: the reports of the runs that finished are built, and the
  command exits 1 with the line that names it.
* ``slurm``: one Slurm job array through submitit (``pip install 'gpcheck[slurm]'``), one task
  per run. A task preempted or out of time is requeued by submitit and resumes from the run's
  checkpoints.
* ``ray``: one Ray task per run, ``num_gpus=1`` on CUDA, on an existing cluster (an address) or
  one started here (``pip install 'gpcheck[ray]'``).

With ``--star-seed N`` the queue runs in two waves (:func:`deep.tasks.waves`, :func:`in_waves`):
seed N's runs (and every run that waits for none) first, then the runs judged against their end
points, which must exist before those start. Every executor waits for the first wave to end
before it hands out the second, so no array task or Ray task ever waits for another.

Whichever runs a task, it measures it with :func:`deep.runner.execute_task` under the run's own
lock in the shared output folder, so the bits are the same, two executors (or two invocations)
never measure a run twice, and a task that dies leaves a run that the next invocation resumes.
This module never schedules anything itself: it hands the queue to the engine and watches the
folders for progress.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from gamma_theory.files import PathEscape, read_json

from .runner import write_suite_info
from .tasks import SUITE_FILE, RunTask, queue_desc, suite_dirs, waves, with_threads
from .verify import SUITE_JSON

EXECUTORS = ("local", "slurm", "ray")


class ExecutorError(RuntimeError):
    """An executor could not run the queue: one line that says what to do, and the exit status
    (2 bad input, 3 the file system refused, 130 interrupted, else 1)."""

    def __init__(self, msg: str, status: int = 1):
        super().__init__(msg)
        self.status = status


class WorkersKilled(ExecutorError):
    """Workers of ``--jobs`` were killed (by a signal) while the others went on: the runs they held
    are not finished, the others are. ``walls`` as :class:`_Watch` gives them."""

    def __init__(self, msg: str, walls: dict[Path, float]):
        super().__init__(msg, 1)
        self.walls = walls


class _Watch:
    """One progress view over all workers: runs finished (a trace or an error in their folders)
    out of the queue, with an ETA, and the moment each suite folder's last run finished."""

    def __init__(self, tasks: list[RunTask], quiet: bool, desc: str):
        from tqdm.auto import tqdm

        self.tasks, self.t0 = tasks, time.perf_counter()
        self.done_at: dict[Path, float] = {}
        self.bar = tqdm(total=len(tasks), initial=self._count(), desc=desc, unit="run", disable=quiet,
                        dynamic_ncols=True)

    def _count(self) -> int:
        return sum(t.finished() for t in self.tasks)

    def update(self) -> None:
        self.bar.update(self._count() - self.bar.n)
        now = time.perf_counter() - self.t0
        for out in suite_dirs(self.tasks):
            if out not in self.done_at and all(t.finished() for t in self.tasks if t.out == out):
                self.done_at[out] = now

    def close(self) -> dict[Path, float]:
        self.update()
        self.bar.close()
        end = time.perf_counter() - self.t0
        return {out: self.done_at.get(out, end) for out in suite_dirs(self.tasks)}


class Interrupted(KeyboardInterrupt):
    """The executor was interrupted and its workers have stopped; ``walls`` (as :class:`_Watch`
    gives them, up to the interruption) still count towards each suite's wall time."""

    def __init__(self, walls: dict[Path, float]):
        super().__init__()
        self.walls = walls


def finish_suites(tasks: list[RunTask], walls: dict[Path, float], command: str | None, executor: dict) -> None:
    """After an executor: add to each ``suite.json`` the wall time from the start of this
    invocation until its last run finished, the command, and which executor ran it."""
    for out in suite_dirs(tasks):
        path = out / SUITE_FILE
        if not path.is_file():
            continue  # nothing of it was measured (every task failed before opening it)
        info = read_json(path, SUITE_JSON, "a suite.json")
        info.update(command=command or info.get("command"), executor=executor, jobs=executor.get("jobs"))
        write_suite_info(out, info, walls.get(out, 0.0))


def in_waves(tasks: list[RunTask], run_wave) -> dict[Path, float]:
    """Run ``run_wave(wave)`` for each wave of ``tasks`` (:func:`deep.tasks.waves`), one after the
    other; per suite folder, its wall time from the start of the first wave until its last run
    finished (each wave's own walls, which count from the wave's start, moved by when it started).
    An interruption or killed workers in a wave stop the waves after it, with their walls so far."""
    t0 = time.perf_counter()
    walls: dict[Path, float] = {}

    def moved(w: dict[Path, float], start: float) -> dict[Path, float]:
        return {out: start + s for out, s in w.items()}

    for wave in waves(tasks):
        start = time.perf_counter() - t0
        try:
            got = run_wave(wave)
        except (Interrupted, WorkersKilled) as exc:
            exc.walls = {**walls, **moved(exc.walls, start)}
            raise
        walls.update(moved(got, start))
    return {out: walls.get(out, 0.0) for out in suite_dirs(tasks)}


# -- local: worker processes ---------------------------------------------------------------------
def run_local(tasks: list[RunTask], jobs: int, *, cuda: bool, threads: int | None, quiet: bool, desc: str,
              gpus: int = 0) -> dict[Path, float]:
    """``jobs`` worker processes over one queue, each taking the runs no other holds. On CUDA,
    worker j sees GPU j mod ``gpus`` only; on the CPU each gets ``threads // jobs`` threads."""
    import torch

    per = max(1, (threads or torch.get_num_threads()) // jobs)
    tasks = with_threads(tasks, None if cuda else per)
    queue = (json.dumps([t.to_dict() for t in tasks]) + "\n").encode("utf-8")
    procs = []
    try:
        for j in range(jobs):
            env = dict(os.environ, OMP_NUM_THREADS=str(per))
            if cuda and gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(j % gpus)
            p = subprocess.Popen([sys.executable, "-m", "deep.executors", "-"], env=env, stdin=subprocess.PIPE)
            procs.append(p)
            # the queue, then the pipe stays open: it closes when this process ends, however it ends
            threading.Thread(target=_feed, args=(p, queue), daemon=True).start()
        where = f"{min(jobs, gpus)} GPU(s)" if cuda and gpus else f"{per} thread(s) each"
        print(f"gpcheck: {jobs} workers on {len(tasks)} runs ({where})", file=sys.stderr)
        watch = _Watch(tasks, quiet, f"{desc} ({jobs} workers)")
        try:
            while any(p.poll() is None for p in procs):
                time.sleep(1.0)
                watch.update()
        except KeyboardInterrupt:
            for p in procs:
                p.send_signal(signal.SIGINT)
            for p in procs:
                p.wait()
            raise Interrupted(watch.close()) from None
        walls = watch.close()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        for p in procs:
            try:
                p.stdin.close()
            except OSError:
                pass
    bad = [(j, p.returncode) for j, p in enumerate(procs) if p.returncode not in (0, 1)]
    if bad:
        j, code = bad[0]
        why = (f"was killed by signal {-code} ({signal.Signals(-code).name})" if code < 0
               else f"stopped with status {code} (its message is above)")
        msg = f"{len(bad)} of {jobs} workers failed: worker {j + 1} {why}"
        if all(c < 0 for _, c in bad):  # killed: the others finished their runs, whose reports are built
            raise WorkersKilled(f"{msg}; the reports of the runs that finished are built, and finished runs and "
                                "checkpoints are kept: rerun the same command to resume the others", walls)
        raise ExecutorError(f"{msg}; finished runs and checkpoints are kept: rerun the same command to resume",
                            code if code in (2, 3, 130) else 1)
    return walls


def _feed(p: subprocess.Popen, queue: bytes) -> None:
    """Write the queue to a worker's stdin and leave the pipe open (closed when the parent ends)."""
    try:
        p.stdin.write(queue)
        p.stdin.flush()
    except OSError:  # the worker is already gone: its return code says why
        pass


def _die_with_parent(stdin) -> None:
    """End this worker when its parent is gone: the kernel's parent-death signal (Linux), and a
    watchdog thread that waits for the parent's end of stdin to close (everywhere)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass

    fd = stdin.fileno()

    def watch():  # on the descriptor, not the buffered file: a daemon thread must hold no lock at exit
        try:
            while os.read(fd, 1 << 16):
                pass
        except OSError:
            pass
        os.kill(os.getpid(), signal.SIGKILL)  # the run's checkpoints are what a rerun resumes from

    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _worker_main(queue_file: str) -> int:
    """A worker of ``run_local``: measure the queue in ``queue_file`` (one JSON list of tasks), or,
    for ``-``, the first line of stdin, and then end when stdin closes (the parent is gone)."""
    import torch

    from .data import DataError
    from .measure import RunMismatch
    from .runner import run_queue

    # started from a shell that ignores SIGINT (a background job), a worker would ignore it too,
    # and the parent, which forwards SIGINT to stop its workers, would wait for ever
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if queue_file == "-":
        line = sys.stdin.buffer.readline()
        if not line.endswith(b"\n"):  # the parent died before the queue was whole
            return 130
        _die_with_parent(sys.stdin.buffer)
        tasks = [RunTask.from_dict(t) for t in json.loads(line)]
    else:
        tasks = [RunTask.from_dict(t) for t in json.loads(Path(queue_file).read_text())]
    if tasks and tasks[0].threads:
        torch.set_num_threads(tasks[0].threads)
    try:
        run_queue(tasks, progress=False, add_wall=False)
    except (DataError, RunMismatch, PathEscape) as exc:
        print(f"gpcheck: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


# -- results of remote tasks ---------------------------------------------------------------------
def _check_results(results: list[dict | BaseException], tasks: list[RunTask], engine: str, logs: str) -> None:
    """A task that raised, or that found a problem no run survives (the data, a folder of other
    settings), stops the command with its first such message; an ERROR run does not (its report row
    says why)."""
    for task, res in zip(tasks, results):
        if isinstance(res, BaseException):
            last = [ln for ln in str(res).strip().splitlines() if ln.strip()]
            raise ExecutorError(f"{engine} task of {task.suite}/{task.name} raised: {last[-1] if last else res!r}; "
                                f"its log is in {logs}; rerun the same command to resume")
        if str(res.get("status", "")).startswith("failed"):
            raise ExecutorError(res["status"][len("failed: "):], 2)


# -- slurm: submitit -----------------------------------------------------------------------------
def run_slurm(tasks: list[RunTask], *, folder: Path, cluster: str, parallelism: int | None, time_min: int,
              partition: str | None, gpus: int, cpus: int, extra: dict[str, str], quiet: bool,
              desc: str) -> dict[Path, float]:
    """One submitit job array over ``tasks``; waits for it with one progress view. ``cluster``:
    ``slurm``, or submitit's ``local`` (processes on this machine, to try it without Slurm)."""
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ExecutorError("--executor slurm needs submitit: pip install 'gpcheck[slurm]'", 2) from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ExecutorError("--executor slurm: no Slurm here (sbatch is not on PATH); run it on a Slurm login "
                            "node, or pass --slurm-cluster local to try the same job array on this machine", 2)
    from ._slurm import SlurmTask, make_executor

    ex = make_executor(folder, cluster, time_min=time_min, partition=partition, gpus=gpus, cpus=cpus,
                       parallelism=parallelism, extra=extra)
    jobs = ex.map_array(SlurmTask(), tasks)
    where = f"{folder}/" if cluster == "local" else f"{folder}/ (job {jobs[0].job_id.split('_')[0]})"
    print(f"gpcheck: {len(jobs)} {cluster} task(s) submitted; logs in {where}", file=sys.stderr)
    watch = _Watch(tasks, quiet, f"{desc} ({cluster} array)")
    try:
        while not all(j.done() for j in jobs):
            time.sleep(2.0 if cluster == "local" else 30.0)
            watch.update()
    except KeyboardInterrupt:
        for j in jobs:
            j.cancel(check=False)
        raise
    walls = watch.close()
    results: list = []
    for j in jobs:
        try:
            results.append(j.result())
        except Exception as exc:  # noqa: BLE001 (submitit raises the task's failure as one of many types)
            results.append(exc)
    _check_results(results, tasks, "slurm", str(folder))
    return walls


# -- ray -----------------------------------------------------------------------------------------
def run_ray(tasks: list[RunTask], *, address: str | None, local_cpus: int | None, gpus: int, cpus: int,
            quiet: bool, desc: str) -> dict[Path, float]:
    """One Ray task per run (``num_gpus=gpus``, ``num_cpus=cpus``) on the cluster at ``address``,
    or on one started here with ``local_cpus`` CPUs; waits with one progress view."""
    try:
        import ray
    except ImportError:
        raise ExecutorError("--executor ray needs Ray: pip install 'gpcheck[ray]'", 2) from None
    from .runner import execute_task

    started = not ray.is_initialized()
    if started:
        kw = dict(include_dashboard=False, logging_level="ERROR", log_to_driver=True)
        try:
            if address:
                ray.init(address=address, **kw)
            else:
                ray.init(num_cpus=local_cpus, object_store_memory=200 * 2**20, **kw)
        except Exception as exc:  # noqa: BLE001 (Ray raises ConnectionError, RuntimeError, ...)
            raise ExecutorError(f"Ray could not start{' at ' + address if address else ''}: "
                                f"{' '.join(str(exc).split())[:300]}") from None
    try:
        remote = ray.remote(execute_task).options(num_gpus=gpus, num_cpus=cpus, max_retries=3,
                                                  retry_exceptions=False)
        refs = [remote.remote(t) for t in tasks]
        watch = _Watch(tasks, quiet, f"{desc} (ray)")
        pending = list(refs)
        try:
            while pending:
                _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
                watch.update()
        except KeyboardInterrupt:
            for r in refs:
                ray.cancel(r, force=True)
            raise
        walls = watch.close()
        results: list = []
        for r in refs:
            try:
                results.append(ray.get(r))
            except Exception as exc:  # noqa: BLE001 (RayTaskError wraps the task's own exception)
                results.append(exc)
        _check_results(results, tasks, "ray", "the Ray session's logs (/tmp/ray/session_latest/logs)")
        return walls
    finally:
        if started:
            ray.shutdown()


# -- the executors, as objects built from their options ----------------------------------------
@dataclass
class LocalExecutor:
    """This machine: the queue in this process (``jobs=1``), or ``jobs`` worker processes
    (:func:`run_local`), on CUDA pinned round-robin to ``gpus`` GPUs."""

    jobs: int = 1
    threads: int | None = None  #: CPU threads, shared by the workers (None: torch's)
    cuda: bool = False
    gpus: int = 0
    quiet: bool = False
    command: str | None = None  #: what suite.json records as the command

    @property
    def record(self) -> dict:
        """What ``suite.json`` records of the executor."""
        return {"executor": "local", "jobs": self.jobs}

    def run(self, tasks: list[RunTask]) -> dict[Path, float | None]:
        """Measure ``tasks``; per suite folder its wall time (see :class:`_Watch`), or None where
        this process measured it itself (``jobs=1``: ``suite.json`` got its wall time as it went)."""
        if self.jobs == 1:  # one process measures the waves in order: one queue, one wall time
            from . import runner  # looked up when run: a test may stand in for the queue

            ordered = [t for wave in waves(tasks) for t in wave]
            return dict.fromkeys(runner.run_queue(ordered, progress=not self.quiet, command=self.command))
        return in_waves(tasks, lambda wave: run_local(wave, self.jobs, cuda=self.cuda, threads=self.threads,
                                                      quiet=self.quiet, desc=queue_desc(wave), gpus=self.gpus))


@dataclass
class SlurmExecutor:
    """One submitit job array, one task per run (:func:`run_slurm`); ``cluster="local"``: the same
    array as processes on this machine."""

    folder: Path
    cluster: str = "slurm"
    jobs: int = 1  #: at most this many array tasks at once (1: no limit)
    time_min: int = 1440
    partition: str | None = None
    extra: dict[str, str] = field(default_factory=dict)
    cuda: bool = False
    threads: int | None = None  #: CPU threads of each task (None: 1)
    quiet: bool = False

    @property
    def record(self) -> dict:
        return {"executor": "slurm", "jobs": self.jobs, "cluster": self.cluster}

    def run(self, tasks: list[RunTask]) -> dict[Path, float]:
        per = self.threads or 1
        return in_waves(tasks, lambda wave: run_slurm(
            with_threads(wave, None if self.cuda else per), folder=Path(self.folder), cluster=self.cluster,
            parallelism=self.jobs if self.jobs > 1 else None, time_min=self.time_min, partition=self.partition,
            gpus=1 if self.cuda else 0, cpus=per, extra=self.extra, quiet=self.quiet, desc=queue_desc(wave)))


@dataclass
class RayExecutor:
    """One Ray task per run (:func:`run_ray`) on the cluster at ``address``, or on one started here
    with ``jobs x threads`` CPUs."""

    address: str | None = None
    jobs: int = 1
    cuda: bool = False
    threads: int | None = None  #: CPU threads of each task (None: 1)
    quiet: bool = False

    @property
    def record(self) -> dict:
        return {"executor": "ray", "jobs": self.jobs}

    def run(self, tasks: list[RunTask]) -> dict[Path, float]:
        per = self.threads or 1
        return in_waves(tasks, lambda wave: run_ray(
            with_threads(wave, None if self.cuda else per), address=self.address,
            local_cpus=None if self.address else max(self.jobs, 1) * per, gpus=1 if self.cuda else 0, cpus=per,
            quiet=self.quiet, desc=queue_desc(wave)))


Executor = LocalExecutor | SlurmExecutor | RayExecutor


def build_executor(name: str, *, jobs: int = 1, threads: int | None = None, cuda: bool = False, gpus: int = 0,
                   quiet: bool = False, command: str | None = None, out_root: str | os.PathLike = "reports",
                   ray_address: str | None = None, slurm_cluster: str = "slurm", slurm_time: int = 1440,
                   slurm_partition: str | None = None, slurm_extra: dict[str, str] | None = None) -> Executor:
    """The executor ``name`` (one of :data:`EXECUTORS`) from the command's options."""
    if name == "local":
        return LocalExecutor(jobs, threads, cuda, gpus, quiet, command)
    if name == "slurm":
        return SlurmExecutor(Path(out_root) / ".slurm", slurm_cluster, jobs, slurm_time, slurm_partition,
                             dict(slurm_extra or {}), cuda, threads, quiet)
    if name == "ray":
        return RayExecutor(ray_address, jobs, cuda, threads, quiet)
    raise ExecutorError(f"unknown executor {name!r}; choose one of: {', '.join(EXECUTORS)}", 2)


if __name__ == "__main__":
    sys.exit(_worker_main(sys.argv[1]))
