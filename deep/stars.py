"""The theta* a pass 2 judges its path against: a list of named sources.

Each :class:`StarSource` is one theta*: the last iterate (always first: the run's own theta*),
the random baseline, the theta* trained longer, an external theta* (another run's
``theta_star.pt``, verified by its sha256 and its parameter layout before use), and earlier
iterates (judged only on the steps before them). :func:`star_sources` lists them in the order the
recorder needs (decreasing reach), :func:`load_stars` puts their parameters into the rows of one
matrix (each model's parameters are views into its row; :mod:`gamma_theory.flat`).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from gamma_theory.files import sha256_bytes
from gamma_theory.flat import FlatLayout, FlatParams, sq_dist

from .context import ExternalStar, Extras
from .errors import StarRefused
from .folder import RunFolder
from .state import load_state


@dataclass(frozen=True)
class StarSource:
    """One theta*: its companion ``name`` (``theta*`` for the run's own), ``kind`` (``last``,
    ``random``, ``extended``, ``external``, ``earlier``, ``event``), ``what`` it is (the trace's
    ``theta_star``), the step before which it is judged (``until``, None: the whole path), and
    where it comes from (``path``; ``sha256`` for an external one; ``seed`` for the random one)."""

    name: str
    kind: str
    what: str
    path: Path | None = None
    until: int | None = None
    sha256: str | None = None
    seed: int | None = None

    def source(self) -> dict | None:
        """Where the theta* came from, for the companion's entry in ``trace.json`` (external ones)."""
        if self.kind != "external":
            return None
        return {"kind": "external", "path": str(self.path), "sha256": self.sha256}


def star_sources(folder: RunFolder, setup: dict, extras: Extras, p1: dict, p1b: dict | None) -> list[StarSource]:
    """Every theta* pass 2 records against, in order of decreasing reach, the real theta* first."""
    plan = [StarSource("theta*", "last", "last iterate" + (" before divergence" if p1["diverged"] else ""),
                       folder.theta_star)]
    if extras.random_baseline:
        seed = extras.baseline_seed + setup["seed"]
        plan.append(StarSource("random", "random", f"random: ||theta_0 - theta*|| from theta_0 in a random direction "
                                                   f"(seed {seed})", seed=seed))
    if p1b and p1b.get("saved"):
        plan.append(StarSource("extended", "extended", f"theta* trained {p1b['epochs']} epochs longer",
                               folder.theta_star_extended))
    for s in extras.external_stars:
        plan.append(StarSource(s.name, "external", f"external: {s.path} (sha256 {s.sha256[:12]}...)", Path(s.path),
                               sha256=s.sha256))
    ends = np.cumsum(p1["epoch_steps"])
    earlier = []
    for e in sorted(extras.candidate_epochs(setup["epochs"]), reverse=True):
        if e < p1["epochs"]:  # else the run diverged before this epoch
            earlier.append(StarSource(f"epoch{e:04d}", "earlier", f"the iterate that starts epoch {e} of {p1['epochs']}",
                                      folder.star(e), int(ends[e - 1])))
    what = {"memorization": "the first iterate that classifies every training sample",
            "grokking": f"the first iterate whose held-out accuracy reaches {extras.grok_accuracy:g}"}
    for name, ev in (p1.get("events") or {}).items():
        if ev is not None and 0 < ev["epoch"] < p1["epochs"]:
            e = ev["epoch"]
            earlier.append(StarSource(name, "event", f"{what[name]} (it starts epoch {e} of {p1['epochs']})",
                                      folder.star(e), int(ends[e - 1])))
    return plan + sorted(earlier, key=lambda s: -s.until)  # stable: decreasing reach, as the recorder needs


def load_external_star(star: ExternalStar | StarSource, model: torch.nn.Module, device) -> dict:
    """The state of an external theta*, after checking that its file's sha256 is the one given
    and that it holds the parameters (and buffers) of ``model``, each with its shape and dtype;
    else :class:`StarRefused` saying which."""
    path = Path(star.path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise StarRefused(f"external theta* {star.name}: cannot read {path} ({exc.strerror or exc})") from None
    got = sha256_bytes(data)
    if got != star.sha256:
        raise StarRefused(f"external theta* {star.name}: {path} is not the file given (its sha256 is {got}, not "
                          f"{star.sha256}); give the digest of the theta* you mean, or the file it belongs to")
    try:
        state = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the digest matched but it is no state file
        raise StarRefused(f"external theta* {star.name}: {path} is not a model state ({type(exc).__name__}: "
                          f"{exc})") from None
    want = model.state_dict()
    if not isinstance(state, dict) or set(state) != set(want):
        names = set(state) if isinstance(state, dict) else set()
        raise StarRefused(f"external theta* {star.name}: {path} does not hold this run's parameters (missing "
                          f"{sorted(set(want) - names)[:5]}, foreign {sorted(names - set(want))[:5]})")
    for k, v in want.items():
        s = state[k]
        if not isinstance(s, torch.Tensor) or s.shape != v.shape or s.dtype != v.dtype:
            raise StarRefused(f"external theta* {star.name}: {path}'s {k} is laid out "
                              f"{tuple(getattr(s, 'shape', ()))} {getattr(s, 'dtype', type(s).__name__)}, the "
                              f"run's model {tuple(v.shape)} {v.dtype}")
    return state


def verify_external_stars(extras: Extras, model_fn: Callable[[], torch.nn.Module]) -> None:
    """Check every external theta* (its digest and layout, :func:`load_external_star`) against a
    model built by ``model_fn`` on the CPU (the global random state left as it was), so that a
    run refuses one before it trains, not after; :class:`StarRefused` says which and why."""
    if not extras.external_stars:
        return
    with torch.random.fork_rng(devices=[]):
        model = model_fn()
    for star in extras.external_stars:
        load_external_star(star, model, "cpu")


def load_stars(sources: list[StarSource], fresh_model: Callable[[], torch.nn.Module], theta0: Path, device):
    """``(models, rows, dist0_sq)``: one model per source in training mode (its parameters views
    into row ``j`` of ``rows``) and each theta*'s squared distance from theta_0."""
    models = [fresh_model() for _ in sources]
    flats, rows = FlatParams.like(models)
    layout = flats[0].layout
    theta0 = layout.fill(layout.empty(dtype=rows.dtype, device=rows.device), load_state(theta0))
    for j, (src, m) in enumerate(zip(sources, models)):
        if src.kind == "random":
            m.load_state_dict(models[0].state_dict())  # its buffers (BN statistics) are theta*'s
            random_star(layout, theta0, rows[0], src.seed, rows[j])
        elif src.kind == "external":
            m.load_state_dict(load_external_star(src, m, device))
        else:
            m.load_state_dict(load_state(src.path, device))
        m.train()
    return models, rows, [float(v) for v in sq_dist(theta0, rows)]


#: entries per draw of the random direction (part of its definition: the same seed and chunk
#: give the same direction)
_DIRECTION_CHUNK = 1 << 18


def _directions(layout: FlatLayout, seed: int):
    """The random direction's Gaussian entries, drawn in chunks from a CPU generator seeded with
    ``seed``, slot by slot in the layout's storage order: ``(start, stop, values)`` per chunk."""
    g = torch.Generator().manual_seed(seed)
    for slot in layout.slots:
        for lo in range(0, slot.numel, _DIRECTION_CHUNK):
            hi = min(slot.numel, lo + _DIRECTION_CHUNK)
            yield slot.offset + lo, slot.offset + hi, torch.randn(hi - lo, generator=g, dtype=torch.float64)


def random_star(layout: FlatLayout, theta0: torch.Tensor, star: torch.Tensor, seed: int,
                out: torch.Tensor) -> torch.Tensor:
    """Write into ``out`` a point at the distance of ``star`` from ``theta0`` (all three in
    ``layout``), in a direction drawn uniformly on the sphere: a normalized Gaussian over the
    parameters' entries (the gaps of the layout stay zero), from a CPU generator seeded with
    ``seed`` (:func:`_directions`). Computed on the CPU in float64, a chunk at a time (the
    direction is drawn twice, for its norm and for the point, rather than held), and rounded to
    the parameters' dtype, as a model holds it."""
    dist = math.sqrt(float(sq_dist(theta0, star)))
    norm = math.sqrt(sum(float(z.square().sum()) for _, _, z in _directions(layout, seed)))
    scale = dist / norm
    with torch.no_grad():
        for lo, hi, z in _directions(layout, seed):
            t0 = theta0[lo:hi].detach().cpu().double()
            out[lo:hi].copy_((t0 + scale * z).to(out.dtype))
    return out


__all__ = ["StarSource", "load_external_star", "load_stars", "random_star", "star_sources", "verify_external_stars"]
