"""The trace: what a path records, step by step, for the checkers to judge.

A trace of a path ``theta_0, ..., theta_K`` of ``theta_{k+1} = theta_k - eta_k * U_k`` holds,
for every step ``k`` on the mini-batch ``z_k`` that step used:

==========  ==============================================
column      meaning
==========  ==============================================
loss        ``l(theta_k; z_k)``
loss_star   ``l(theta*; z_k)`` (same batch, same mode)
inner       ``<theta_k - theta*, U_k>``
update_sq   ``||U_k||^2``
dist_sq     ``||theta_k - theta*||^2``
step        ``k`` (int)
epoch       the epoch the step belongs to (int)
==========  ==============================================

optionally the stochastic gradient's columns (recorded after backward, before the optimizer
step; for plain SGD ``g_k = U_k``), which the related path conditions need:

===========  =============================================
grad_inner   ``<g_k, theta_k - theta*>``
grad_sq      ``||g_k||^2``
===========  =============================================

optionally the learning rate of every step, for a schedule (see ``docs/schedules.md``):

===========  =============================================
eta          ``eta_k``, the learning rate step k was taken with: ``theta_{k+1} = theta_k - eta_k U_k``,
             so ``inner`` and ``update_sq`` hold ``U_k = (theta_k - theta_{k+1}) / eta_k``
===========  =============================================

and the scalars ``lr`` (the base learning rate ``eta``: the constant one, or the schedule's base)
and ``dist0_sq = ||theta_0 - theta*||^2``. A trace without the ``eta`` column means
``eta_k = lr`` for every k (every trace written before schedules existed, and every constant-lr
trace gpcheck writes now: :meth:`Trace.save` writes the column only when some ``eta_k`` differs
from ``lr``, so a constant schedule's file is byte for byte a constant-lr run's). On disk a trace
is ``NAME.npz`` (columns and scalars) with an optional sidecar ``NAME.json`` of metadata (config,
seeds, versions, hardware, timings). Loading validates the schema and says what is wrong with
which file.
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .files import BadFile, parse_json, sha256_file, write_bytes, write_text

FLOAT_COLUMNS = ("loss", "loss_star", "inner", "update_sq", "dist_sq")
INT_COLUMNS = ("step", "epoch")
GRAD_COLUMNS = ("grad_inner", "grad_sq")
#: the optional per-step learning rate eta_k of a schedule (absent: eta_k = lr for every k)
ETA_COLUMN = "eta"
SCALARS = ("lr", "dist0_sq")
#: columns whose values are squared norms and so can never be negative
SQUARE_COLUMNS = ("update_sq", "dist_sq")


class TraceError(ValueError):
    """A trace that breaks the schema; the message names the file and the problem."""


@dataclass
class Trace:
    """Columns of one recorded path plus the scalars ``lr`` and ``dist0_sq``."""

    loss: np.ndarray
    loss_star: np.ndarray
    inner: np.ndarray
    update_sq: np.ndarray
    dist_sq: np.ndarray
    lr: float
    dist0_sq: float
    step: np.ndarray | None = None
    epoch: np.ndarray | None = None
    #: optional, one value per epoch: the largest per-sample gap l(theta_k; z_i) - l(theta*; z_i)
    #: over the samples z_i of that epoch (for Theorem 1 item 2 per sample)
    sample_gap_max: np.ndarray | None = None
    grad_inner: np.ndarray | None = None  #: <g_k, theta_k - theta*> (optional)
    grad_sq: np.ndarray | None = None  #: ||g_k||^2 (optional)
    #: optional: eta_k, the learning rate of every step (a schedule); None means eta_k = lr for all k
    eta: np.ndarray | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in FLOAT_COLUMNS:
            setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        n = len(self.loss)
        if self.step is None:
            self.step = np.arange(n, dtype=np.int64)
        if self.epoch is None:
            self.epoch = np.zeros(n, dtype=np.int64)
        self.step = np.asarray(self.step, dtype=np.int64).reshape(-1)
        self.epoch = np.asarray(self.epoch, dtype=np.int64).reshape(-1)
        if self.sample_gap_max is not None:
            self.sample_gap_max = np.asarray(self.sample_gap_max, dtype=np.float64).reshape(-1)
        for name in GRAD_COLUMNS:
            if getattr(self, name) is not None:
                setattr(self, name, np.asarray(getattr(self, name), dtype=np.float64).reshape(-1))
        if self.eta is not None:
            self.eta = np.asarray(self.eta, dtype=np.float64).reshape(-1)
        self.lr = float(self.lr)
        self.dist0_sq = float(self.dist0_sq)

    def __len__(self) -> int:
        return len(self.loss)

    @property
    def has_grad(self) -> bool:
        """Whether the gradient's columns were recorded."""
        return self.grad_inner is not None and self.grad_sq is not None

    @property
    def constant_lr(self) -> bool:
        """Every step was taken with the base ``lr`` (no ``eta`` column, or one equal to ``lr``
        everywhere): the checkers then compute exactly as they did before schedules existed."""
        return self.eta is None or bool((self.eta == self.lr).all())

    @property
    def step_lr(self) -> float | np.ndarray:
        """``eta_k`` as the checkers use it: the scalar ``lr`` when :attr:`constant_lr` (so a
        constant-lr trace gives bitwise the numbers it gave before), else the ``eta`` column."""
        return self.lr if self.constant_lr else self.eta

    @property
    def eta_k(self) -> np.ndarray:
        """``eta_k`` for every step, as an array (``lr`` repeated when there is no ``eta`` column)."""
        return np.full(len(self.loss), self.lr) if self.eta is None else self.eta

    @property
    def gap(self) -> np.ndarray:
        """``loss_k - loss_star_k``, the loss gap on the step's own batch."""
        return self.loss - self.loss_star

    def validate(self, where: str = "trace") -> "Trace":
        """Raise :class:`TraceError` naming ``where`` if the trace breaks the schema."""
        n = len(self.loss)
        if n == 0:
            raise TraceError(f"{where}: the trace has no steps")
        for name in FLOAT_COLUMNS + INT_COLUMNS:
            col = getattr(self, name)
            if len(col) != n:
                raise TraceError(
                    f"{where}: column '{name}' has {len(col)} rows but 'loss' has {n}; "
                    "all columns must have one row per step"
                )
        if (self.grad_inner is None) != (self.grad_sq is None):
            raise TraceError(f"{where}: 'grad_inner' and 'grad_sq' come together, or not at all")
        for name in GRAD_COLUMNS if self.has_grad else ():
            if len(getattr(self, name)) != n:
                raise TraceError(f"{where}: column '{name}' has {len(getattr(self, name))} rows but 'loss' has {n}")
        for name in FLOAT_COLUMNS + (GRAD_COLUMNS if self.has_grad else ()):
            col = getattr(self, name)
            bad = np.flatnonzero(~np.isfinite(col))
            if bad.size:
                raise TraceError(
                    f"{where}: column '{name}' is not finite at {bad.size} step(s), first at "
                    f"row {bad[0]} (value {col[bad[0]]}); a diverged run cannot be judged"
                )
        if n > 1 and not (np.diff(self.step) > 0).all():
            raise TraceError(f"{where}: column 'step' must increase strictly from row to row")
        if n > 1 and not (np.diff(self.epoch) >= 0).all():
            raise TraceError(f"{where}: column 'epoch' must not decrease from row to row")
        if self.sample_gap_max is not None and len(self.sample_gap_max) != len(np.unique(self.epoch)):
            raise TraceError(f"{where}: 'sample_gap_max' has {len(self.sample_gap_max)} entries but the trace has "
                             f"{len(np.unique(self.epoch))} epochs; it needs one per epoch")
        if self.sample_gap_max is not None and not np.isfinite(self.sample_gap_max).all():
            raise TraceError(f"{where}: 'sample_gap_max' is not finite")
        for name in SQUARE_COLUMNS + (("grad_sq",) if self.has_grad else ()):
            col = getattr(self, name)
            bad = np.flatnonzero(col < 0)
            if bad.size:
                raise TraceError(
                    f"{where}: column '{name}' is a squared norm but is negative at row "
                    f"{bad[0]} ({col[bad[0]]})"
                )
        if self.eta is not None:
            if len(self.eta) != n:
                raise TraceError(f"{where}: column 'eta' has {len(self.eta)} rows but 'loss' has {n}; "
                                 "it needs the learning rate of every step")
            bad = np.flatnonzero(~(np.isfinite(self.eta) & (self.eta > 0)))
            if bad.size:
                raise TraceError(
                    f"{where}: column 'eta' must be a positive number at every step, got {self.eta[bad[0]]} at row "
                    f"{bad[0]} ({bad.size} step(s)); a step with eta_k = 0 has no update U_k = (theta_k - "
                    "theta_{k+1}) / eta_k: leave it out of the trace (theta does not move)")
        if not (np.isfinite(self.lr) and self.lr > 0):
            raise TraceError(f"{where}: scalar 'lr' must be a positive number, got {self.lr}")
        if not (np.isfinite(self.dist0_sq) and self.dist0_sq > 0):
            raise TraceError(
                f"{where}: scalar 'dist0_sq' must be positive, got {self.dist0_sq} "
                "(theta_0 == theta* leaves gamma undefined)"
            )
        return self

    # -- persistence ---------------------------------------------------------------------
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``PATH.npz``, then ``PATH.json`` (``meta`` plus the npz's sha256 as
        ``npz_sha256``), each atomically; return the npz path.

        The sidecar is written last, so a sidecar always describes a whole npz, and
        :func:`load_trace` refuses an npz that is not the one its sidecar describes (truncated,
        altered, or copied from another run)."""
        npz = _npz_path(path)
        arrays = {name: getattr(self, name) for name in FLOAT_COLUMNS + INT_COLUMNS}
        for name in ("sample_gap_max",) + GRAD_COLUMNS:
            if getattr(self, name) is not None:
                arrays[name] = getattr(self, name)
        if not self.constant_lr:  # eta_k = lr everywhere is what a trace without the column means
            arrays[ETA_COLUMN] = self.eta
        arrays["lr"] = np.float64(self.lr)
        arrays["dist0_sq"] = np.float64(self.dist0_sq)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        digest = write_bytes(npz, buf.getvalue())
        meta = {**self.meta, "npz_sha256": digest}
        write_text(npz.with_suffix(".json"), json.dumps(meta, indent=2, sort_keys=True, default=_json_default))
        return npz


def _real(a: np.ndarray) -> bool:
    """Integer or floating point (not bool, complex, strings or objects)."""
    return np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)


def _npz_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p if p.suffix == ".npz" else p.with_name(p.name + ".npz")


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot store {type(obj).__name__} in trace metadata")


def load_trace(path: str | os.PathLike) -> Trace:
    """Load and validate a trace; :class:`TraceError` says what is wrong with which file.

    Only the five float columns and the scalars ``lr`` and ``dist0_sq`` are required; ``step``
    and ``epoch`` default to ``0..n-1`` and all zeros, and the JSON sidecar is optional. Where
    the sidecar records ``npz_sha256`` (every trace gpcheck writes), the npz must have it.
    """
    npz = Path(path)
    if not npz.exists() and npz.suffix != ".npz":
        npz = _npz_path(path)
    where = str(npz)
    if not npz.exists():
        raise TraceError(f"{where}: no such file")
    if npz.is_dir():
        raise TraceError(f"{where}: is a folder, not a trace file (.npz)")
    meta: dict[str, Any] = {}
    sidecar = npz.with_suffix(".json")
    if sidecar.exists():
        try:
            meta = parse_json(sidecar.read_bytes().decode("utf-8"), sidecar)
        except UnicodeDecodeError as exc:
            raise TraceError(f"{sidecar}: metadata sidecar is not valid JSON ({exc})") from None
        except BadFile as exc:  # not JSON, or nested deeper than any sidecar gpcheck writes
            raise TraceError(f"{sidecar}: metadata sidecar {exc.reason}") from None
        if not isinstance(meta, dict):
            raise TraceError(f"{sidecar}: metadata sidecar must hold a JSON object, got {type(meta).__name__}")
        want = meta.pop("npz_sha256", None)  # about the file, not the path: not kept in meta
        if want is not None and sha256_file(npz) != want:
            raise TraceError(f"{where}: is not the file its sidecar {sidecar.name} describes (sha256 differs): "
                             "it was truncated, altered or copied from elsewhere")
    what = ("a trace is the .npz file that gpcheck ladder, gpcheck deep or gamma_theory.PathRecorder writes, with "
            f"the columns {', '.join(FLOAT_COLUMNS)} and the scalars {', '.join(SCALARS)}")
    try:
        with open(npz, "rb") as fh:
            head = fh.read(4)
    except OSError as exc:
        raise TraceError(f"{where}: cannot be read ({exc.strerror or exc})") from None
    if head not in (b"PK\x03\x04", b"PK\x05\x06"):  # a zip archive begins so (an empty one with its end)
        raise TraceError(f"{where}: not a readable .npz trace: the file is not an .npz (zip) archive at all; {what}")
    try:
        with np.load(npz, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except ValueError as exc:
        if "pickle" not in str(exc):
            raise TraceError(f"{where}: not a readable .npz trace ({exc.__class__.__name__}: {exc})") from None
        # numpy's own message advises allow_pickle=True, which would run code from the file: never
        raise TraceError(f"{where}: not a readable .npz trace: it holds pickled Python objects, which a trace never "
                         f"does and gpcheck never loads; {what}") from None
    except Exception as exc:  # noqa: BLE001 - whatever the damage (zip, CRC, zlib), one message
        raise TraceError(f"{where}: not a readable .npz trace ({exc.__class__.__name__}: {exc})") from None
    missing = [k for k in FLOAT_COLUMNS + SCALARS if k not in arrays]
    if missing:
        raise TraceError(
            f"{where}: missing {', '.join(repr(m) for m in missing)}; a trace needs the columns "
            f"{', '.join(FLOAT_COLUMNS)} and the scalars {', '.join(SCALARS)}"
        )
    for k in SCALARS:
        if arrays[k].size != 1:
            raise TraceError(f"{where}: '{k}' must be a scalar, got shape {arrays[k].shape}")
        if not _real(arrays[k]):
            raise TraceError(f"{where}: scalar '{k}' must be a real number, got dtype {arrays[k].dtype}")
    optional = [k for k in INT_COLUMNS + ("sample_gap_max",) + GRAD_COLUMNS + (ETA_COLUMN,) if k in arrays]
    for k in FLOAT_COLUMNS + tuple(optional):
        if arrays[k].ndim != 1:
            raise TraceError(f"{where}: column '{k}' must be 1-D, got shape {arrays[k].shape}")
        if not _real(arrays[k]):
            raise TraceError(f"{where}: column '{k}' must hold real numbers, got dtype {arrays[k].dtype}")
    for k in INT_COLUMNS:
        col = arrays.get(k)
        if col is not None and np.issubdtype(col.dtype, np.floating) and not (
                np.isfinite(col).all() and (col == np.round(col)).all() and (np.abs(col) < 2**62).all()):
            raise TraceError(f"{where}: column '{k}' must hold whole numbers")
    lengths = {k: len(arrays[k]) for k in FLOAT_COLUMNS + INT_COLUMNS + (ETA_COLUMN,) if k in arrays}
    if len(set(lengths.values())) > 1:
        detail = ", ".join(f"{k}={v}" for k, v in lengths.items())
        raise TraceError(f"{where}: columns have unequal lengths ({detail}); the file may be truncated")
    trace = Trace(
        **{k: arrays[k] for k in FLOAT_COLUMNS},
        lr=float(arrays["lr"].reshape(-1)[0]),
        dist0_sq=float(arrays["dist0_sq"].reshape(-1)[0]),
        step=arrays.get("step"),
        epoch=arrays.get("epoch"),
        sample_gap_max=arrays.get("sample_gap_max"),
        grad_inner=arrays.get("grad_inner"),
        grad_sq=arrays.get("grad_sq"),
        eta=arrays.get(ETA_COLUMN),
        meta=meta,
    )
    return trace.validate(where)
