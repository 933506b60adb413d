"""The submitit side of ``--executor slurm`` (imported only then: submitit is an optional extra)."""

from __future__ import annotations

from pathlib import Path

import submitit

from .runner import RunTask, execute_task


class SlurmTask(submitit.helpers.Checkpointable):
    """One array task: measure one run. On preemption or timeout submitit calls ``checkpoint``,
    which (as Checkpointable does by default) requeues the same task; the run then resumes from
    the checkpoints that pass 1 and pass 2 keep in its folder, to the identical trace."""

    def __call__(self, task: RunTask) -> dict:
        return execute_task(task)


def make_executor(folder: Path, cluster: str, *, time_min: int, partition: str | None, gpus: int, cpus: int,
                  parallelism: int | None, extra: dict[str, str]) -> submitit.AutoExecutor:
    ex = submitit.AutoExecutor(folder=str(Path(folder) / "%j"), cluster=cluster)
    params = dict(name="gpcheck", timeout_min=time_min, gpus_per_node=gpus, cpus_per_task=cpus, tasks_per_node=1,
                  nodes=1)
    if cluster == "slurm":
        params.update(slurm_partition=partition, slurm_array_parallelism=parallelism or 256)
        params.update({f"slurm_{k}": v for k, v in extra.items()})
        params = {k: v for k, v in params.items() if v is not None}
    ex.update_parameters(**params)
    return ex
