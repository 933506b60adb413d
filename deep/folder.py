"""A measured run's folder: every path and file of it, and the crash-safety contract.

:class:`RunFolder` is the only code that knows the folder's layout; the passes, the picture and
the suite runner ask it for paths and files instead of joining names themselves.
"""

from __future__ import annotations

import io
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gamma_theory import Trace, TraceError, load_trace, recording_identity
from gamma_theory.files import (BadFile, PathEscape, check_links, clean_stale_tmp, fault_point, not_a_link, read_json,
                                sha256_file, write_bytes, write_json)
from gamma_theory.recorder import trace_from_rows

from .env import environment_mismatch
from .errors import EnvironmentMismatch, RemeasureWarning, RunMismatch
from .fingerprint import differences
from .state import StateDamaged, load_state, remove_state, verify_state
from .verify import SETUP_JSON, companion_path, consistent_status, read_trace_json

#: relative tolerance of the recording identity a finished trace (and a saved partial one) must meet
IDENTITY_RTOL = 1e-9


@dataclass
class MeasuredRun:
    trace: Trace | None  #: None when the run diverged in its first epoch
    status: str  #: "ok" or "diverged"
    diverged: dict | None  #: {"epoch", "step", "reason"} when diverged
    workdir: Path

    @property
    def meta(self) -> dict:
        return self.trace.meta if self.trace is not None else json.loads(RunFolder(self.workdir).trace_json.read_text())


class RunFolder:
    """The files of one measured run, and what a crash at any moment leaves.

    Files: ``setup.json`` (the claim: the settings; a rerun with others is refused),
    ``theta0.pt``, ``checkpoints/epochNNNN.pt``, ``stars/epochNNNN.pt`` (earlier iterates that
    serve as theta*), ``theta_star.pt``, ``theta_star_extended.pt`` (each state file with a
    ``.sha256`` written after it), ``pass1.json``, ``pass1b.json`` (the extension's summary),
    ``pass2_partial.npz`` (the verified part of pass 2: its columns and the epoch they reach, one
    file, so one fact), ``companions/NAME.npz`` (+ ``.json``), ``trace.npz`` and last
    ``trace.json`` (the sidecar, with the npz's and the companions' sha256: its presence means
    "finished").

    The contract:

    * every file is written atomically under a unique temporary name (stale temporaries of dead
      processes are removed when the folder is opened), and a state file's digest after it;
    * nothing is trusted unverified: a file found damaged (truncated, altered, missing, or a
      partial trace that disagrees with itself or with pass 1) makes the run fall back to an
      earlier intact checkpoint, or, where none can serve, be measured again from the start,
      which gives the identical trace; a finished run whose ``trace.npz``, a companion or a kept
      state file no longer matches ``trace.json`` is measured again too;
    * so a rerun after a crash anywhere resumes: pass 1 from its newest intact checkpoint, pass 2
      from its verified part;
    * checkpoints are deleted only after pass 2 verified a later one and saved its part up to
      there, and the rest (with the partial trace and the earlier theta*) only after the trace
      is saved (:meth:`drop_progress`), so the newest verified checkpoint is always there;
    * confinement: the folder is never a link, and no link inside it leads to a folder outside
      (checked on :meth:`open`); the wipe removes links, never follows them; a companion's file
      is read only from inside the folder.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @classmethod
    def open(cls, path) -> "RunFolder":
        """The folder at ``path``, created if need be, after the confinement checks, with the
        stale temporaries of dead processes removed."""
        path = not_a_link(path, "a run folder")  # it may be wiped: never through a link
        path.mkdir(parents=True, exist_ok=True)
        check_links(path)  # nor written through a link to a folder elsewhere
        clean_stale_tmp(path)
        return cls(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # -- paths -----------------------------------------------------------------------------------
    setup_json = property(lambda self: self.path / "setup.json")
    theta0 = property(lambda self: self.path / "theta0.pt")
    theta_star = property(lambda self: self.path / "theta_star.pt")
    theta_star_extended = property(lambda self: self.path / "theta_star_extended.pt")
    pass1_json = property(lambda self: self.path / "pass1.json")
    pass1b_json = property(lambda self: self.path / "pass1b.json")
    partial = property(lambda self: self.path / "pass2_partial.npz")
    trace_json = property(lambda self: self.path / "trace.json")
    trace_npz = property(lambda self: self.path / "trace.npz")
    checkpoints = property(lambda self: self.path / "checkpoints")
    stars = property(lambda self: self.path / "stars")

    @property
    def suite_manifest(self) -> Path:
        """The manifest of the suite folder the run lies in, where it is one (``SUITE/runs/NAME``)."""
        return self.path.parent.parent / "manifest.json"

    def checkpoint(self, epoch: int) -> Path:
        return self.checkpoints / f"epoch{epoch:04d}.pt"

    def checkpoint_epochs(self) -> list[int]:
        d = self.checkpoints
        return sorted(int(p.stem[5:]) for p in d.glob("epoch[0-9][0-9][0-9][0-9].pt")) if d.exists() else []

    def star(self, epoch: int) -> Path:
        """The iterate that starts ``epoch``: an earlier theta* of the sensitivity check."""
        return self.stars / f"epoch{epoch:04d}.pt"

    def companion(self, name: str) -> str:
        """The file name, relative to the folder and without ``.npz``, of companion ``name``."""
        return f"companions/{name}"

    # -- the claim, the wipe, the finished mark --------------------------------------------------
    def claim(self, setup: dict) -> None:
        """Write ``setup.json``, or check that the folder holds this very run (:class:`RunMismatch`)."""
        path = self.setup_json
        if path.exists():
            try:
                before = read_json(path, SETUP_JSON, "a run's setup.json")
            except BadFile as exc:
                warnings.warn(f"{exc}; measuring {self.path} again from the start", RemeasureWarning, stacklevel=3)
                self.wipe()
            else:
                if "fingerprint" not in before and "fingerprint" in setup:
                    # measured before fingerprints: a suite run's spec ("run": network, knobs,
                    # optimizer, ...) names what decides its path; any other such folder is refused
                    legacy = {k: v for k, v in setup.items() if k != "fingerprint"}
                    if "run" in before and not differences(before, legacy):
                        return
                    if not differences(before, legacy):
                        raise RunMismatch(f"{self.path} holds a run measured before gpcheck recorded the model, "
                                          "optimizer, schedule, loss and data it ran (setup.json has no "
                                          "fingerprint), so it cannot tell whether it is this run; delete the "
                                          "folder to measure again, or use another")
                differ = differences(before, setup)  # a key only one of them has differs too
                if differ:
                    shown = "; ".join(differ[:4]) + (f"; and {len(differ) - 4} more" if len(differ) > 4 else "")
                    raise RunMismatch(f"{self.path} holds another run ({shown}); use another output folder, or "
                                      "delete this one to start over")
                return
        write_json(path, setup, sort_keys=True, default=str)

    def wipe(self) -> None:
        """Delete every file of the run but ``setup.json`` (the run is measured again). Never
        through a link: the run folder must not be one, and a link inside it is removed, not followed."""
        not_a_link(self.path, "a run folder")
        for p in self.path.iterdir():
            if p.name == "setup.json":
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)  # rmtree does not follow the links inside
            else:
                p.unlink(missing_ok=True)

    def finished(self) -> MeasuredRun | None:
        """The finished run, or None. A result that does not verify is removed (measured again)."""
        done = self.trace_json
        if not done.exists():
            return None
        try:
            info = read_trace_json(done)
            consistent_status(info, done)
            if info.get("status") == "diverged" and "npz_sha256" not in info:  # diverged, nothing measured
                return MeasuredRun(None, "diverged", info.get("diverged"), self.path)
            trace = load_trace(self.trace_npz)
            self.load_companions(trace.meta)
            for kept in (self.theta_star, self.theta0):  # the run's products, where they are kept: intact
                if kept.exists():
                    verify_state(kept)
        except (BadFile, TraceError, StateDamaged) as exc:
            warnings.warn(f"{self.path}: the finished trace does not verify ({exc}); measuring the run again",
                          RemeasureWarning, stacklevel=3)
            done.unlink(missing_ok=True)
            return None
        return MeasuredRun(trace, trace.meta.get("status", "ok"), trace.meta.get("diverged"), self.path)

    def save_trace(self, trace: Trace) -> MeasuredRun:
        """Save the finished trace: the npz, then the sidecar that marks the run finished."""
        trace.save(self.path / "trace")
        return MeasuredRun(trace, trace.meta["status"], trace.meta["diverged"], self.path)

    def save_no_trace(self, diverged: dict, setup: dict, pass1: dict, meta: dict | None) -> MeasuredRun:
        """Mark the run finished as diverged with no trace to judge: ``trace.json`` alone."""
        info = {"complete": True, "status": "diverged", "diverged": diverged, "setup": setup, "pass1": pass1,
                **(meta or {})}
        write_json(self.trace_json, info, sort_keys=True, default=str)
        return MeasuredRun(None, "diverged", diverged, self.path)

    def drop_progress(self) -> None:
        """After the trace is saved: the checkpoints, the partial trace and the earlier theta*
        are no longer needed."""
        for e in self.checkpoint_epochs():
            remove_state(self.checkpoint(e))
            fault_point("cleanup")
        self.partial.unlink(missing_ok=True)
        shutil.rmtree(self.stars, ignore_errors=True)
        try:
            self.checkpoints.rmdir()
        except OSError:  # absent, or holds something that is not ours
            pass

    # -- companions ------------------------------------------------------------------------------
    def save_companion(self, name: str, trace: Trace) -> dict:
        """Write companion ``name``'s trace; returns its entry for ``trace.json``'s ``companions``."""
        rel = self.companion(name)
        npz = trace.save(self.path / rel)
        entry = {"file": f"{rel}.npz", "npz_sha256": sha256_file(npz), "theta_star": trace.meta["theta_star"],
                 "steps": len(trace), "dist0_sq": trace.dist0_sq}
        if trace.meta.get("source") is not None:
            entry["source"] = trace.meta["source"]
        return entry

    def load_companions(self, meta: dict) -> dict[str, Trace]:
        """The traces recorded beside the main one (whose metadata is ``meta``), each checked
        against the digest the main trace recorded; :class:`TraceError` if one does not match."""
        out = {}
        companions = meta.get("companions") or {}
        if not isinstance(companions, dict):
            raise TraceError(f"{self.trace_json}: 'companions' must be an object, not {type(companions).__name__}")
        for name, c in companions.items():
            try:  # the entry as gpcheck writes it, naming a file of this run's own folder
                path = companion_path(self.path, name, c)
            except (BadFile, PathEscape) as exc:
                raise TraceError(str(exc)) from None
            tr = load_trace(path)
            if sha256_file(path) != c["npz_sha256"]:
                raise TraceError(f"{path}: is not the companion trace the run recorded (sha256 differs)")
            out[name] = tr
        return out

    # -- pass 1's state --------------------------------------------------------------------------
    def newest_checkpoint(self, device, env: dict) -> dict | None:
        """The newest intact checkpoint (damaged ones are removed, with a warning), or None;
        :class:`EnvironmentMismatch` when pass 1 began in another environment."""
        for e in reversed(self.checkpoint_epochs()):
            try:
                st = load_state(self.checkpoint(e), device)
            except StateDamaged as exc:
                warnings.warn(f"{exc}; pass 1 resumes from an earlier checkpoint", RemeasureWarning, stacklevel=4)
                remove_state(self.checkpoint(e))
                continue
            why = environment_mismatch(self.path, st["env"], env, "pass 1 started with other settings")
            if why:
                raise EnvironmentMismatch(why)
            return st
        return None

    def read_summary(self, path: Path) -> dict:
        """A pass's summary file (pass1.json, pass1b.json); damaged: :class:`StateDamaged`."""
        try:
            return read_json(path)
        except BadFile as exc:
            raise StateDamaged.from_bad_file(exc) from None

    def write_summary(self, path: Path, summary: dict) -> None:
        write_json(path, summary, sort_keys=True, default=str)

    # -- pass 2's verified part ------------------------------------------------------------------
    def save_partial(self, rows: np.ndarray, step: np.ndarray, epoch: np.ndarray, eta: np.ndarray | None,
                     verified_epoch: int, wall_s: float, invocations: list[dict] | None = None) -> None:
        """The verified part of pass 2 (the recorder's rows for every theta*, and every step's
        eta_k) and the epoch it reaches, in one atomically written file (with what the
        invocations so far ran, as JSON text)."""
        buf = io.BytesIO()
        np.savez(buf, rows=rows, step=step, epoch=epoch, eta=np.asarray(eta, dtype=np.float64),
                 verified_epoch=verified_epoch, wall_s=wall_s,
                 invocations=np.array(json.dumps(invocations or [], default=str)))
        write_bytes(self.partial, buf.getvalue())

    def load_partial(self, p1: dict, width: int, lr: float, dist0_sq: float):
        """``(rows, step, epoch, verified_epoch, wall_s, invocations, eta)`` of the verified part of
        pass 2, or ``(None, None, None, 0, 0.0, [], None)``. A file that does not agree with itself and
        with pass 1 (the main theta*'s columns must meet the recording identity, with each step's
        eta_k) raises :class:`StateDamaged`."""
        path = self.partial
        if not path.exists():
            return None, None, None, 0, 0.0, [], None
        try:
            with np.load(path, allow_pickle=False) as z:
                rows, step, epoch = z["rows"], z["step"], z["epoch"]
                # a part saved before schedules existed: every step at the constant lr
                eta = z["eta"] if "eta" in z.files else np.full(len(rows), float(lr))
                if eta.shape != (len(rows),):
                    raise ValueError(f"eta has shape {eta.shape} for {len(rows)} rows")
                verified, wall = int(z["verified_epoch"]), float(z["wall_s"])
                runs = json.loads(str(z["invocations"])) if "invocations" in z.files else []
                if not isinstance(runs, list):
                    raise ValueError("invocations is not a list")
            main = trace_from_rows(rows, step, epoch, 0, lr, dist0_sq, eta=eta)
        except Exception as exc:  # noqa: BLE001 - truncated zip, bad CRC, missing member, bad shape: damaged
            raise StateDamaged(path, f"is not readable ({type(exc).__name__}: {exc})") from None
        lengths = p1["epoch_steps"][:verified]
        agrees = (
            0 < verified <= p1["epochs"]
            and rows.ndim == 2 and rows.shape[1] == width
            and np.array_equal(epoch, np.repeat(np.arange(verified), lengths))
            and np.array_equal(step, np.arange(sum(lengths)))
            and recording_identity(main, IDENTITY_RTOL).holds
        )
        if not agrees:
            raise StateDamaged(path, f"does not agree with itself or with pass 1 (claims epoch {verified}, "
                                     f"holds {len(rows)} rows)")
        return rows, step, epoch, verified, wall, runs, eta


def load_companions(workdir, meta: dict) -> dict[str, Trace]:
    """The companion traces of the run in ``workdir`` (see :meth:`RunFolder.load_companions`)."""
    return RunFolder(workdir).load_companions(meta)


__all__ = ["IDENTITY_RTOL", "MeasuredRun", "RunFolder", "load_companions"]
