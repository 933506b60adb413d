"""Pass 2: replay pass 1's steps and record every column of the trace against every theta*
(:mod:`deep.stars`), checking the replay bit for bit at every checkpoint and at the end; then
the checks a finished trace must pass before it is saved (:func:`finish`).

The replay runs pass 1's own step (:func:`deep.step.make_step`) with a :class:`StarRecording`
around it: the forwards at the theta* still judged on the same batch (training mode, batch
statistics, running statistics untouched) and the recorder's device half, all in one step
function, so one CUDA graph per batch size and number of active theta*.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable

import numpy as np
import torch

from gamma_theory import PathRecorder, Trace, TraceError, recording_identity
from gamma_theory.recorder import BASE, PER_STAR, lr_of, trace_from_rows

from .context import RunContext
from .env import environment, environment_mismatch
from .errors import EnvironmentMismatch, RecordingError, ReplayMismatch
from .folder import IDENTITY_RTOL, MeasuredRun
from .graphs import invocation, merged_step_path
from .state import load_state, remove_state
from .stars import load_stars, star_sources
from .losses import as_loss
from .step import batch_stats_only, make_step, rng_state, set_rng_state


class StarRecording:
    """What pass 2 adds around the training step: the losses at the first ``active`` theta*
    (``stars``) on the step's batch, the gradient's capture, and the recorder's row as output.

    ``random``: the step draws random numbers (dropout masks, noise; pass 1 saw torch's generator
    advance). The sample z_k then includes them: each theta*'s forward starts from the random
    state the training forward started from, so it sees the same masks, and the training's
    generator is put back where the training forward left it (the replay draws exactly what
    pass 1 drew). ``eta``: the step's learning rate under a schedule (set before each step;
    None: the recorder's constant ``lr``)."""

    def __init__(self, rec: PathRecorder, stars: list[torch.nn.Module], loss_fn, record_grad: bool,
                 random: bool = False, device: torch.device | None = None):
        self.rec, self.stars, self.loss_fn, self.record_grad = rec, stars, as_loss(loss_fn), record_grad
        self.random, self.device = bool(random), device or rec.prev.device
        self.eta: float | None = None
        self._start = None

    def before_forward(self) -> None:
        if self.random:
            self._start = rng_state(self.device)

    def at_forward(self, batch):
        with torch.no_grad():
            if not self.random:
                return [self.loss_fn(m, batch) for m in self.stars]
            after = rng_state(self.device)
            out = []
            for m in self.stars:
                set_rng_state(self._start, self.device)
                out.append(self.loss_fn(m, batch))
            set_rng_state(after, self.device)
            return out

    def at_gradient(self) -> None:
        if self.record_grad:
            self.rec.capture_grad()

    def output(self, loss, loss_star):
        return self.rec.row(loss, loss_star, self.eta)


def likely_cause(random: bool, graphs: bool) -> str:
    """Why a replay can leave pass 1's path, most likely first."""
    causes = []
    if random:
        causes.append("the step draws random numbers (pass 1 saw torch's generator advance), and some come from a "
                      "generator gpcheck does not save and replay: numpy's or Python's random, a torch.Generator of "
                      "the model's or loss's own, DataLoader workers; draw them from torch's default generator")
    else:
        causes.append("the step depends on something besides the parameters, the optimizer, the batch and torch's "
                      "generator (a generator of its own, numpy's or Python's random, a counter or cache kept in the "
                      "model or the loss)")
    causes.append("an op without a deterministic kernel, or a different device or library version")
    if graphs:
        causes.append("a CUDA graph replay that differs from the eager step: measure with --no-cuda-graphs")
    return "The training is not reproducible here; likely: " + "; or ".join(causes)


def params_equal(model: torch.nn.Module, ref: dict | torch.nn.Module) -> tuple[bool, float]:
    """Whether ``model``'s parameters equal ``ref``'s (a model, or a state dict) bit for bit, and
    the largest deviation when they do not."""
    names = [n for n, _ in model.named_parameters()]
    mine = [p.detach() for _, p in model.named_parameters()]
    if isinstance(ref, torch.nn.Module):
        theirs = [p.detach() for p in ref.parameters()]
    else:
        theirs = [ref[n].to(mine[0].device) for n in names]
    if all(torch.equal(x, y) for x, y in zip(mine, theirs)):
        return True, 0.0
    return False, max(float((x.double() - y.double()).abs().max()) if x.numel() else 0.0 for x, y in zip(mine, theirs))


def pass2(ctx: RunContext, p1: dict, p1b: dict | None) -> dict[str, Trace] | None:
    """Replay and record; returns the traces against every theta* (None if there is nothing to
    measure), the real theta*'s under the name ``"theta*"``."""
    epochs = p1["epochs"]
    if epochs == 0:
        return None
    folder, setup, extras, device = ctx.folder, ctx.setup, ctx.extras, ctx.device
    env = environment(device)
    why = environment_mismatch(folder.path, p1["env"], env)
    if why:
        raise EnvironmentMismatch(why)
    sources = star_sources(folder, setup, extras, p1, p1b)
    models, star_rows, dist0_sq = load_stars(sources, ctx.fresh_model, folder.theta0, device)

    width = BASE + PER_STAR * len(sources)
    prior, prior_step, prior_epoch, start, wall_before, before, prior_eta = folder.load_partial(p1, width, ctx.lr,
                                                                                            dist0_sq[0])
    random = bool(p1.get("random_step"))
    if random and ctx.graphs:
        raise ValueError(f"{folder.path}: the step draws random numbers (dropout, noise), and pass 2 gives each "
                         "theta* the training forward's random state, which a CUDA graph cannot; measure with "
                         "cuda_graphs=False (--no-cuda-graphs)")
    t = ctx.resume(folder.checkpoint(start))
    rec = PathRecorder(t.flat, star_rows, ctx.lr, dist0_sq=dist0_sq,
                       first_step=len(prior) if prior is not None else 0, until=[s.until for s in sources],
                       record_grad=extras.record_grad)

    def all_rows():
        rows, step, epoch = rec.rows()
        eta = rec.etas(always=True)
        if prior is None:
            return rows, step, epoch, eta
        return (np.concatenate([prior, rows]), np.concatenate([prior_step, step]), np.concatenate([prior_epoch, epoch]),
                np.concatenate([prior_eta, eta]))

    graphs = ctx.step_graphs()
    step_fns: dict[int, Callable] = {}  # per number of active theta*: one function, so one CUDA graph
    t0, ran = time.perf_counter(), 0

    def invocations(elapsed: float) -> list[dict]:  # the earlier invocations' kept parts, and this one's
        return before + [invocation(ran, elapsed, graphs)]

    last_verified = start
    with contextlib.ExitStack() as stack:
        for m in models:
            stack.enter_context(batch_stats_only(m))
        for epoch in ctx.bar(range(start, epochs), "pass 2", start, epochs):
            t.model.train()
            for idx in t.sampler.next_epoch(device):
                active = rec.n_active()
                if active not in step_fns:
                    recording = StarRecording(rec, models[:active], ctx.loss_fn, extras.record_grad, random, device)
                    step_fns[active] = (make_step(t.model, t.opt, ctx.data, ctx.loss_fn, t.flat, recording, t.recipe),
                                        recording)
                fn, recording = step_fns[active]
                eta = lr_of(t.opt) if t.sched is not None else None  # eta_k: this step's rate, before sched.step()
                recording.eta = eta
                (row,) = graphs.run(("replay", len(idx), active), fn, idx)
                rec.push(row.clone() if graphs.requested else row, epoch, eta)  # a graph's row is overwritten
                if t.sched is not None:
                    t.sched.step()
                ran += 1
            rec.flush()
            t.flat.check()  # nothing moved the parameters out of the buffer the recorder reads
            ck = folder.checkpoint(epoch + 1)
            if ck.exists():
                ok, dev = params_equal(t.model, load_state(ck, "cpu", mmap=True)["model"])
                if not ok:
                    raise ReplayMismatch(f"{folder.path}: pass 2 left pass 1 at epoch {epoch + 1}: largest parameter "
                                         f"deviation {dev:.3e}. {likely_cause(random, graphs.requested)}; delete "
                                         "the folder to start over.")
                elapsed = time.perf_counter() - t0
                folder.save_partial(*all_rows(), epoch + 1, wall_before + elapsed, invocations(elapsed))
                if not ctx.keep_checkpoints and last_verified != epoch + 1:
                    remove_state(folder.checkpoint(last_verified))
                last_verified = epoch + 1
    ok, dev = params_equal(t.model, models[0])
    if not ok:
        raise ReplayMismatch(f"{folder.path}: pass 2 ended {dev:.3e} away from theta* (largest parameter deviation). "
                             f"{likely_cause(random, graphs.requested)}; delete the folder to start over.")
    elapsed = time.perf_counter() - t0
    wall, runs = wall_before + elapsed, invocations(elapsed)
    rows, step, epoch, eta = all_rows()
    traces = {}
    for j, src in enumerate(sources):
        meta = {"theta_star": src.what}
        if src.source() is not None:
            meta["source"] = src.source()
        traces[src.name] = trace_from_rows(rows, step, epoch, j, ctx.lr, dist0_sq[j], src.until, extras.record_grad,
                                           meta, eta=eta)
    trace = traces["theta*"]
    trace.meta.update({
        "status": "diverged" if p1["diverged"] else "ok",
        "diverged": p1["diverged"],
        "setup": setup,
        "steps_per_epoch": math.ceil(setup["n_train"] / setup["batch_size"]),
        "epochs_measured": epochs,
        "theta_star_eval": p1.get("theta_star_eval"),
        "theta_star_extended": p1b,
        "replay_verified": {"checkpoints": "bitwise equal", "final": "bitwise equal to theta*"},
        "env": env,
        "pass1": {k: p1.get(k) for k in ("wall_s", "ms_per_step", "steps", "step_path", "invocations")},
        "pass2": {"wall_s": wall, "ms_per_step": 1e3 * wall / len(trace), "theta_stars": len(sources),
                  "record_grad": extras.record_grad, "flat_params": True, "record_chunk": rec.chunk,
                  "step_path": merged_step_path(runs), "invocations": runs},
        "num_params": sum(p.numel() for p in models[0].parameters()),
    })
    if random:  # only then: the traces of deterministic steps keep the metadata they had
        trace.meta["random_step"] = {
            "replayed": "bitwise (torch's generators saved in every checkpoint)",
            "theta_star": "each theta*'s loss on step k is taken with the random state of the step at theta_k (the "
                          "same dropout masks: the sample z_k includes them); it does not advance the training's "
                          "generator"}
    return traces


def finish(ctx: RunContext, p1: dict, traces: dict[str, Trace] | None) -> MeasuredRun:
    """Check the recorded traces and save them (the companions first: the main trace's sidecar,
    which marks the run finished, lists their digests); a path that cannot be judged is filed as
    diverged. :class:`RecordingError` when a trace fails its own checks (nothing is saved)."""
    folder, meta = ctx.folder, ctx.meta
    if traces is None:
        return folder.save_no_trace(p1["diverged"], ctx.setup, p1, meta)
    trace = traces.pop("theta*")
    trace.meta.update(meta or {})
    try:
        trace.validate(str(folder.path))
    except ValueError as exc:  # e.g. an infinite loss at theta* on some batch
        reason = f"the measured path cannot be judged: {exc}"
        diverged = p1["diverged"] or {"epoch": int(trace.epoch[-1]), "step": len(trace) - 1}
        diverged = {**diverged, "reason": f"{diverged.get('reason', '')}; {reason}".lstrip("; ")}
        return folder.save_no_trace(diverged, ctx.setup, p1, meta)
    check_complete(trace, p1["epoch_steps"], folder.path)
    companions = {}
    for name, tr in traces.items():
        try:
            tr.validate(f"{folder.path}: {name}")
        except TraceError as exc:  # e.g. an infinite loss at a random theta*: said, not judged
            companions[name] = {"theta_star": tr.meta["theta_star"], "unjudged": str(exc)}
            continue
        check_complete(tr, p1["epoch_steps"][:len(np.unique(tr.epoch))], folder.path)
        companions[name] = folder.save_companion(name, tr)
    trace.meta["companions"] = {k: v for k, v in companions.items() if "file" in v}
    trace.meta["companions_unjudged"] = {k: v for k, v in companions.items() if "file" not in v}
    run = folder.save_trace(trace)
    if not ctx.keep_checkpoints:
        folder.drop_progress()
    return run


def check_complete(trace: Trace, lengths: list[int], where) -> None:
    """One row per step of pass 1 (epochs of ``lengths`` steps), in order, and the recording
    identity: or no trace is saved (:class:`RecordingError`)."""
    want_epoch = np.repeat(np.arange(len(lengths)), lengths)
    if len(trace) != int(sum(lengths)) or not np.array_equal(trace.epoch, want_epoch) \
            or not np.array_equal(trace.step, np.arange(len(trace))):
        raise RecordingError(f"{where}: the recorded trace has {len(trace)} rows, not the {sum(lengths)} steps "
                             "of pass 1 in order; delete the folder and run again")
    ident = recording_identity(trace, IDENTITY_RTOL)
    if not ident.holds:
        raise RecordingError(f"{where}: the recorded trace breaks the recording identity (relative residual "
                             f"{ident.max_rel_residual:.3g} at step {ident.worst_step}); it is not saved")


__all__ = ["StarRecording", "check_complete", "finish", "params_equal", "pass2"]
