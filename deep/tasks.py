"""The queue, resolved once: suite and preset names become plain values here, and nowhere after.

:func:`resolve_suites` is the one place where a suite, a preset, data sets and the ``--networks`` /
``--variants`` filters are looked up by name. It gives one :class:`SuiteConfig` per suite and data
set (the suite's question and runs, the preset's settings, the folder), and :func:`tasks_of`
one :class:`RunTask` per run: its config, the run's resolved :class:`~deep.suites.RunSpec` (the
model reference: its network's registry entry, knobs, width and seed) and how to execute it.
A worker, an executor, the plan and the command read these values; none looks a suite up again
by name, so a suite measured through any executor is the suite that was resolved here.

Tasks are frozen dataclasses of plain values: picklable (submitit, Ray) and JSON-able
(:meth:`RunTask.to_dict`, the queue of the ``--jobs`` workers).

Also here: what an invocation did to the run folders (:func:`run_states`, :func:`outcomes`), and
the names of the suite-level files (:data:`SUITE_FILE`, :data:`MANIFEST_FILE`, :data:`INDEX_FILE`).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .suites import PRESET_TABLE, Preset, RunSpec, get_suite

#: the suite-level files (a run folder's own files belong to the run folder, deep/measure.py)
SUITE_FILE = "suite.json"  #: what was asked, per suite folder
MANIFEST_FILE = "manifest.json"  #: the digests of every finished run, per suite folder
INDEX_FILE = "README.md"  #: the index of the reports under an --out root (validation/index.py)

DATASET_CHOICES = ("cifar10", "cifar100", "cifar10-jpeg", "both")
#: where `gpcheck deep` writes by default: a git-ignored folder, so a run never rewrites the
#: committed reports/ (pass --out reports to add to those)
DEFAULT_OUT = "gpcheck-out"
LABELS = ("true", "random")
#: seed of the permutation behind ``--labels random`` (stated in every report)
RANDOM_LABELS_SEED = 0
#: classes and training images of the full data sets
DATASET_SHAPE = {"cifar10": (10, 50_000), "cifar100": (100, 50_000), "cifar10-jpeg": (10, 50_000)}


def resolve_datasets(dataset: str | None, preset: str) -> list[str]:
    dataset = dataset or PRESET_TABLE[preset].default_dataset
    if dataset not in DATASET_CHOICES:
        raise ValueError(f"unknown data set {dataset!r}; choose one of {', '.join(DATASET_CHOICES)}")
    return ["cifar10", "cifar100"] if dataset == "both" else [dataset]


def report_dir(out_root: str | os.PathLike, suite: str, preset: str, dataset: str, labels: str = "true",
               networks: tuple[str, ...] | None = None, variants: tuple[str, ...] | None = None,
               star_seed: int | None = None) -> Path:
    """``OUT/<suite>-<preset>-<dataset>[-<network>+...][-<variant>+...][-starseed<N>][-random-labels]``:
    a suite measured on some of its networks or variants only (``--networks``, ``--variants``) has a
    folder of its own, so its report never shrinks the report of the whole suite; so has one whose
    runs are also judged against seed N's end points (``--star-seed N``: their settings differ, and a
    run folder refuses other settings)."""
    only = ("-" + "+".join(networks) if networks else "") + ("-" + "+".join(variants) if variants else "")
    star = f"-starseed{star_seed}" if star_seed is not None else ""
    noise = "-random-labels" if labels == "random" else ""
    return Path(out_root) / f"{suite}-{preset}-{dataset}{only}{star}{noise}"


#: the companion a run records against seed N's end point (validation/companion_claims.py STAR_SEED)
def star_seed_companion(seed: int) -> str:
    return f"star_seed{seed}"


def check_star_seed(star_seed: int | None, seeds: int) -> None:
    """ValueError (one line, saying what to do) unless ``star_seed`` is None or one of ``seeds`` seeds (0 ..
    seeds - 1) with at least one other seed to judge against it."""
    if star_seed is None:
        return
    if seeds < 2:
        raise ValueError(f"--star-seed {star_seed} judges the runs of the other seeds against seed {star_seed}'s end "
                         f"points, and there is {seeds} seed: add --seeds 2 or more")
    if not 0 <= star_seed < seeds:
        raise ValueError(f"--star-seed {star_seed}: the runs have seeds 0 to {seeds - 1} (--seeds {seeds}); "
                         "give one of them")


@dataclass(frozen=True)
class SuiteConfig:
    """One suite on one data set, resolved: everything its suite folder is about, as values."""

    suite: str
    preset: str
    dataset: str
    out_root: str
    settings: Preset  #: the preset, resolved
    question: str
    runs: tuple[RunSpec, ...]  #: every run of the suite (after the filters), seed-major
    labels: str = "true"
    star_extend: float = 0.0
    networks: tuple[str, ...] | None = None  #: only these networks of the suite (None: all)
    variants: tuple[str, ...] | None = None  #: only these variants (None: all)
    #: ``--star-seed N``: every run of another seed is also judged against seed N's end point of its
    #: network and variant (companion ``star_seed<N>``); seed N's runs are measured first (:func:`waves`)
    star_seed: int | None = None

    @property
    def out(self) -> Path:
        """The suite folder."""
        return report_dir(self.out_root, self.suite, self.preset, self.dataset, self.labels, self.networks,
                          self.variants, self.star_seed)

    def star_run(self, spec: RunSpec) -> RunSpec | None:
        """The run whose end point ``spec`` is also judged against: seed N's run of the same network and
        variant (None without ``--star-seed``, and for seed N's own runs)."""
        if self.star_seed is None or spec.seed == self.star_seed:
            return None
        for r in self.runs:
            if r.seed == self.star_seed and (r.network, r.variant) == (spec.network, spec.variant):
                return r
        return None

    @property
    def seeds(self) -> int:
        return len({r.seed for r in self.runs})

    @property
    def extras(self):
        """What pass 2 records besides the path (:class:`deep.measure.Extras`), for this preset."""
        from .measure import Extras

        p = self.settings
        return Extras(random_baseline=p.random_baseline, sensitivity=p.sensitivity, star_extend=self.star_extend)

    def to_dict(self) -> dict:
        return {**asdict(self), "settings": self.settings.to_dict(), "runs": [r.to_dict() for r in self.runs]}

    @classmethod
    def from_dict(cls, d: dict) -> SuiteConfig:
        tup = lambda v: None if v is None else tuple(v)  # noqa: E731
        return cls(**{**d, "settings": Preset.from_dict(d["settings"]), "runs": tuple(RunSpec(**r) for r in d["runs"]),
                      "networks": tup(d.get("networks")), "variants": tup(d.get("variants"))})


@dataclass(frozen=True)
class RunTask:
    """One run of one suite on one data set, and everything a process needs to measure it: a
    plain, picklable value, so any executor (this process, ``--jobs`` workers, a Slurm array
    task, a Ray task) measures it the same way, into the same folder, with the same bits."""

    config: SuiteConfig
    spec: RunSpec  #: the run, resolved (its network, knobs, optimizer, lr, epochs, width, seeds)
    data_root: str | None = None
    download: bool = False
    device: str | None = None
    threads: int | None = None
    cuda_graphs: bool | None = None  #: None: on a CUDA device, yes

    name = property(lambda self: self.spec.name)
    suite = property(lambda self: self.config.suite)
    preset = property(lambda self: self.config.preset)
    dataset = property(lambda self: self.config.dataset)
    out_root = property(lambda self: self.config.out_root)

    @property
    def out(self) -> Path:
        return self.config.out

    @property
    def workdir(self) -> Path:
        return self.out / "runs" / self.name

    def finished(self) -> bool:
        """The run ended (a trace, or an error) as far as its folder says."""
        return (self.workdir / "trace.json").is_file() or (self.workdir / "error.json").is_file()

    def to_dict(self) -> dict:
        return {**asdict(self), "config": self.config.to_dict(), "spec": self.spec.to_dict()}

    @classmethod
    def from_dict(cls, d: dict) -> RunTask:
        return cls(**{**d, "config": SuiteConfig.from_dict(d["config"]), "spec": RunSpec(**d["spec"])})


def resolve_suites(suites, preset: str, dataset: str | None, out_root, *, seeds: int | None = None,
                 labels: str = "true", star_extend: float = 0.0, networks: tuple[str, ...] | None = None,
                 variants: tuple[str, ...] | None = None, star_seed: int | None = None) -> list[SuiteConfig]:
    """One :class:`SuiteConfig` per suite of ``suites`` (a name or a list) and data set of
    ``dataset``, suite by suite; ValueError (naming the choices) for an unknown suite, preset or
    data set, a network or variant the suite lacks, or a ``star_seed`` that is not one of the seeds
    (:func:`check_star_seed`)."""
    suites = [suites] if isinstance(suites, str) else list(suites)
    networks = None if networks is None else tuple(dict.fromkeys(networks))
    variants = None if variants is None else tuple(dict.fromkeys(variants))
    configs = []
    for s in suites:
        suite = get_suite(s, preset, seeds, networks, variants)
        check_star_seed(star_seed, len({r.seed for r in suite.runs}))
        for ds in resolve_datasets(dataset, preset):
            configs.append(SuiteConfig(s, preset, ds, str(out_root), PRESET_TABLE[preset], suite.question,
                                       tuple(suite.runs), labels, star_extend, networks, variants, star_seed))
    return configs


def tasks_of(configs: list[SuiteConfig], *, data_root=None, download: bool = False, device: str | None = None,
             threads: int | None = None, cuda_graphs: bool | None = None) -> list[RunTask]:
    """The queue of ``configs``: suite folder by suite folder, run by run."""
    root = None if data_root is None else str(data_root)
    return [RunTask(c, spec, root, download, device, threads, cuda_graphs) for c in configs for spec in c.runs]


def suite_tasks(suites, preset: str, dataset: str | None, out_root, *, seeds: int | None = None,
                labels: str = "true", star_extend: float = 0.0, data_root=None, download: bool = False,
                device: str | None = None, threads: int | None = None,
                cuda_graphs: bool | None = None, networks: tuple[str, ...] | None = None,
                variants: tuple[str, ...] | None = None, star_seed: int | None = None) -> list[RunTask]:
    """Every run of ``suites`` (a name or a list) on each data set of ``dataset``, in one queue:
    suite by suite, data set by data set, run by run (:func:`resolve_suites`, :func:`tasks_of`)."""
    configs = resolve_suites(suites, preset, dataset, out_root, seeds=seeds, labels=labels, star_extend=star_extend,
                             networks=networks, variants=variants, star_seed=star_seed)
    return tasks_of(configs, data_root=data_root, download=download, device=device, threads=threads,
                    cuda_graphs=cuda_graphs)


def waves(tasks: list[RunTask]) -> list[list[RunTask]]:
    """The queue in the waves an executor measures one after the other: first every run whose end
    point another run is judged against (``--star-seed N``: seed N's runs) and every run that
    waits for none; then the runs that are judged against seed N's end points, which must exist
    before they start (deep/runner.py reads its digest when the run starts). Without ``--star-seed``,
    one wave: the queue as it is. Empty waves are left out; the order inside a wave is the queue's."""
    first = [t for t in tasks if t.config.star_run(t.spec) is None]
    second = [t for t in tasks if t.config.star_run(t.spec) is not None]
    first.sort(key=lambda t: t.config.star_seed is None or t.spec.seed != t.config.star_seed)  # stable
    return [w for w in (first, second) if w]


def with_threads(tasks: list[RunTask], threads: int | None) -> list[RunTask]:
    """The same tasks, each measured with ``threads`` CPU threads (None: the process's)."""
    return [replace(t, threads=threads) for t in tasks]


def suite_dirs(tasks: list[RunTask]) -> list[Path]:
    """The suite folders of ``tasks``, in queue order, each once."""
    return list(dict.fromkeys(t.out for t in tasks))


def queue_desc(tasks: list[RunTask]) -> str:
    """``bn+skip/smoke/cifar10-jpeg``: the suites, preset and data sets of a queue."""
    if not tasks:
        return "nothing to run"
    suites = list(dict.fromkeys(x.suite for x in tasks))
    dss = list(dict.fromkeys(x.dataset for x in tasks))
    return f"{'+'.join(suites)}/{tasks[0].preset}/{'+'.join(dss)}"


# -- what an invocation did: the run folders before and after it --------------------------------
def _digest(path: Path) -> bytes | None:
    """The bytes of a small file (a run's ``trace.json``), or None when it is absent."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None


def run_states(tasks: list[RunTask]) -> dict[RunTask, tuple]:
    """Per task, what its folder holds: (trace.json's bytes or None, error.json's bytes or None,
    whether it holds progress an unfinished run resumes from: a checkpoint, pass 1's summary, a
    partial pass 2)."""
    states = {}
    for t in tasks:
        wd = t.workdir
        trace, err = _digest(wd / "trace.json"), _digest(wd / "error.json")
        progress = trace is None and ((wd / "pass1.json").is_file() or (wd / "pass2_partial.npz").is_file()
                                      or any((wd / "checkpoints").glob("epoch*.pt")))
        states[t] = (trace, err, progress)
    return states


def outcomes(before: dict[RunTask, tuple], tasks: list[RunTask]) -> dict[Path, dict[str, int]]:
    """Per suite folder, what happened to its runs between ``before`` (:func:`run_states`) and now:
    ``reused`` (finished before, untouched), ``measured`` (finished now, from scratch), ``resumed``
    (finished now, from the progress an earlier invocation left), ``error`` (ended in an error
    now), ``unfinished`` (neither: interrupted, or still measured by another process). Read from
    the folders, so a run that another invocation finished meanwhile counts as measured."""
    after = run_states(tasks)
    out: dict[Path, dict[str, int]] = {}
    for t in tasks:
        (trace0, _err0, prog0), (trace1, err1, _) = before[t], after[t]
        if trace1 is not None and trace1 == trace0:
            kind = "reused"
        elif trace1 is not None:
            kind = "resumed" if prog0 else "measured"
        elif err1 is not None:
            kind = "error"
        else:
            kind = "unfinished"
        counts = out.setdefault(t.out, dict.fromkeys(("measured", "resumed", "reused", "error", "unfinished"), 0))
        counts[kind] += 1
    return out


def describe_outcome(counts: dict[str, int]) -> str:
    """``12 of 12 runs were already finished; nothing measured`` or ``12 runs: measured 3,
    resumed 1, reused 8 (already finished)``, with the errors and unfinished runs where there are any."""
    n = sum(counts.values())
    if counts["reused"] == n:
        return f"{n} of {n} runs were already finished; nothing measured"
    parts = [f"measured {counts['measured']}", f"resumed {counts['resumed']}",
             f"reused {counts['reused']} (already finished)"]
    if counts["error"]:
        parts.append(f"{counts['error']} ended in an error")
    if counts["unfinished"]:
        parts.append(f"{counts['unfinished']} not finished")
    return f"{n} runs: " + ", ".join(parts)


def touched(counts: dict[str, int]) -> bool:
    """Did the invocation change anything of the suite (a run measured, resumed, failed, begun)?"""
    return counts["reused"] != sum(counts.values())
