"""What a measured run is asked to record (:class:`Extras`) and what its passes share
(:class:`RunContext`): one frozen object instead of a dozen positional arguments."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import CyclicSampler, DeviceData
from .folder import RunFolder
from .graphs import StepGraphs
from .state import load_state
from .step import PLAIN, LossFn, Recipe, Training, flat_model, set_rng_state, use_capturable

ModelFn = Callable[[], torch.nn.Module]
OptimizerFn = Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]
#: ``scheduler_fn(optimizer) -> scheduler``: a ``torch.optim.lr_scheduler`` object (anything with
#: ``step()``, ``state_dict()`` and ``load_state_dict()``), stepped after every step
SchedulerFn = Callable[[torch.optim.Optimizer], object]

#: what an external theta*'s name may be: a companion file name, and none of the built-in ones
_STAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_BUILT_IN = re.compile(r"theta\*|random|extended|epoch[0-9]{4}")


@dataclass(frozen=True)
class ExternalStar:
    """A theta* from a file outside the run: ``theta_star.pt`` of another run (another seed's end
    point, say), judged like the run's own companions. ``sha256``: the file's digest, checked
    before it is used (and at every resume); its parameters must be laid out as the run's model's."""

    name: str
    path: str
    sha256: str

    def __post_init__(self):
        if not _STAR_NAME.fullmatch(self.name) or _BUILT_IN.fullmatch(self.name):
            raise ValueError(f"external theta* name {self.name!r}: give letters, digits, '_', '.' or '-' (not "
                             "starting with one of the last three), and none of theta*, random, extended, epochNNNN")
        if not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError(f"external theta* {self.name}: sha256 {self.sha256!r} is not 64 hex digits")
        object.__setattr__(self, "path", str(Path(self.path).resolve()))

    def to_dict(self) -> dict:
        return {"name": self.name, "path": self.path, "sha256": self.sha256}


@dataclass(frozen=True)
class Extras:
    """What pass 2 records besides the path against theta*, all from the same replay.

    * ``random_baseline``: the same path judged against a meaningless theta*: a point at the same
      distance from theta_0 as the real theta*, in a random direction (seeded by
      ``baseline_seed + seed``). The principle should fail there.
    * ``sensitivity``: fractions of the epochs at whose end the iterate serves as theta*, judged on
      the steps before it (the iterate at 50% on the first half of the path, ...).
    * ``star_extend``: also judge the path against a theta* trained this fraction of the epochs
      longer (0: not).
    * ``record_grad``: record the stochastic gradient's columns ``<g_k, theta_k - theta*>`` and
      ``||g_k||^2`` (for the related path conditions).
    * ``external_stars``: theta* from files outside the run (:class:`ExternalStar`, or
      ``(name, path, sha256)`` tuples), each judged on the whole path as companion ``name``.

    Each theta* costs one forward pass per step it is judged on; the gradient columns one copy.
    """

    random_baseline: bool = True
    sensitivity: tuple[float, ...] = (0.5, 0.75, 0.9)
    star_extend: float = 0.0
    record_grad: bool = True
    baseline_seed: int = 24_681_357
    external_stars: tuple[ExternalStar, ...] = field(default=())

    def __post_init__(self):
        stars = tuple(s if isinstance(s, ExternalStar) else ExternalStar(*s) for s in self.external_stars)
        names = [s.name for s in stars]
        if len(set(names)) != len(names):
            raise ValueError(f"external theta* names must differ: {names}")
        object.__setattr__(self, "external_stars", stars)

    def candidate_epochs(self, epochs: int) -> list[int]:
        """The epochs whose first iterate serves as an earlier theta*: strictly inside the run."""
        return sorted({e for e in (round(f * epochs) for f in self.sensitivity) if 0 < e < epochs})

    def extend_epochs(self, epochs: int) -> int:
        return max(1, round(self.star_extend * epochs)) if self.star_extend > 0 else 0

    def to_dict(self) -> dict:
        out = {"random_baseline": self.random_baseline, "sensitivity": list(self.sensitivity),
               "star_extend": self.star_extend, "record_grad": self.record_grad,
               "baseline_seed": self.baseline_seed}
        if self.external_stars:  # only then: the folders measured without keep the settings they have
            out["external_stars"] = [s.to_dict() for s in self.external_stars]
        return out


NO_EXTRAS = Extras(random_baseline=False, sensitivity=(), star_extend=0.0, record_grad=False)


@dataclass(frozen=True)
class RunContext:
    """One measured run, as its passes see it: how to build its model and optimizer, its data and
    loss, its settings (``setup``, as ``setup.json`` holds them), its folder and extras, and how
    it reports. ``graphs_backend``: a factory of a stand-in for CUDA's graph backend (tests)."""

    model_fn: ModelFn
    optimizer_fn: OptimizerFn
    data: DeviceData
    loss_fn: LossFn
    setup: dict
    folder: RunFolder
    extras: Extras
    keep_checkpoints: bool = False
    meta: dict | None = None
    progress: bool = True
    desc: str = "run"
    graphs_backend: Callable[[], object] | None = None
    scheduler_fn: SchedulerFn | None = None
    recipe: Recipe = PLAIN

    @property
    def device(self) -> torch.device:
        return self.data.device

    @property
    def graphs(self) -> bool:
        return bool(self.setup.get("cuda_graphs"))

    @property
    def lr(self) -> float:
        return self.setup["lr"]

    @property
    def epochs(self) -> int:
        return self.setup["epochs"]

    def fresh_model(self) -> torch.nn.Module:
        """``model_fn()`` after ``torch.manual_seed(seed)``, on the device, in the run's memory format."""
        torch.manual_seed(self.setup["seed"])
        m = self.model_fn().to(self.device)
        return m.to(memory_format=torch.channels_last) if self.setup["channels_last"] else m

    def optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return use_capturable(self.optimizer_fn(model.parameters()), self.graphs)

    def sampler(self) -> CyclicSampler:
        return CyclicSampler(len(self.data), self.setup["batch_size"], self.setup["data_seed"])

    def step_graphs(self) -> StepGraphs:
        backend = self.graphs_backend() if self.graphs and self.graphs_backend is not None else None
        return StepGraphs(self.device, self.graphs, backend=backend)

    def start(self) -> Training:
        """The training at theta_0: a fresh model (its parameters in flat buffers), optimizer,
        scheduler and sampler."""
        model = self.fresh_model()
        flat = flat_model(model)
        opt = self.optimizer(model)
        sched = self.scheduler_fn(opt) if self.scheduler_fn is not None else None
        return Training(model, flat, opt, self.sampler(), sched, self.recipe)

    def resume(self, checkpoint: Path) -> Training:
        """The training exactly as pass 1 left it at ``checkpoint`` (mapped, not read: what is not
        used, the previous epoch's model, takes no memory)."""
        st = load_state(checkpoint, "cpu", mmap=True)
        t = self.start()
        t.model.load_state_dict(st["model"])
        t.opt.load_state_dict(_copied(st["optimizer"]))  # the optimizer puts its state where pass 1 had it
        use_capturable(t.opt, self.graphs)
        t.sampler.load_state_dict(st["sampler"])
        if t.sched is not None:
            t.sched.load_state_dict(st["scheduler"])
        set_rng_state(st.get("rng"), self.device)
        del st
        return t

    def bar(self, it, label: str, start: int, total: int):
        if not self.progress:
            return it
        from tqdm.auto import tqdm

        return tqdm(it, desc=f"{self.desc} {label}", initial=start, total=total, unit="epoch", leave=False,
                    dynamic_ncols=True)


def _copied(obj):
    """The tensors of ``obj`` (an optimizer state) copied, so that nothing keeps the mapped file alive."""
    if isinstance(obj, torch.Tensor):
        return obj.clone()
    if isinstance(obj, dict):
        return {k: _copied(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_copied(v) for v in obj)
    return obj


__all__ = ["NO_EXTRAS", "ExternalStar", "Extras", "ModelFn", "OptimizerFn", "RunContext", "SchedulerFn"]
