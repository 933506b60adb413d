"""Pass 1 (train, checkpoint, save theta* and evaluate it) and the star extension (train on from
theta* to get a theta* trained longer). Both run :func:`deep.step.run_epochs`.

Divergence: a run whose loss or parameters stop being finite, or whose parameters stop changing
for a whole epoch (vanishing gradient), is *diverged*: pass 1 stops in epoch ``e``, ``theta*`` is
the iterate that started epoch ``e - 1`` (the last whose whole epoch of losses was finite), and
the trace covers epochs ``0 .. e-2`` (as the paper plots such runs up to where they broke).

Checkpoint policy: pass 1 writes a checkpoint at epoch 0, every ``checkpoint_every`` epochs and at
its last epoch, each with the model state at the start of the epoch before (so that a resumed run
falls back exactly as an uninterrupted one would if the next epoch diverges).
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from gamma_theory.files import fault_point

from .context import RunContext
from .env import environment
from .graphs import invocation, merged_step_path
from .state import save_state
from .losses import as_loss
from .step import batch_stats_only, copy_state, rng_state, run_epochs, same_rng, set_rng_state, use_capturable


def pass1(ctx: RunContext) -> dict:
    """Train, checkpoint, save theta* and evaluate it; returns the pass-1 summary (pass1.json).
    The iterates the sensitivity check takes as earlier theta* are saved as they pass."""
    folder, setup = ctx.folder, ctx.setup
    if folder.pass1_json.exists():
        return folder.read_summary(folder.pass1_json)
    t = ctx.start()
    env = environment(ctx.device)
    graphs = ctx.step_graphs()
    epochs, every = setup["epochs"], setup["checkpoint_every"]
    candidates = set(ctx.extras.candidate_epochs(epochs))
    st = folder.newest_checkpoint(ctx.device, env)
    if st is not None:  # resume
        t.model.load_state_dict(st["model"])
        t.opt.load_state_dict(st["optimizer"])
        use_capturable(t.opt, ctx.graphs)
        t.sampler.load_state_dict(st["sampler"])
        if t.sched is not None:
            t.sched.load_state_dict(st["scheduler"])
        set_rng_state(st.get("rng"), ctx.device)
        random_step = bool(st.get("random_step", False))
        losses = [x.numpy() for x in st["losses"]]
        start, wall_before, state_prev = int(st["epoch"]), float(st["wall_s"]), st["model_prev"]
        before = list(st.get("invocations") or [])
        del st
    else:
        losses, start, wall_before, before = [], 0, 0.0, []
        random_step = False  # whether a step drew from torch's random generators (dropout, noise)
        state_prev = None  # model state at the start of the previous epoch
        save_state(copy_state(t.model), folder.theta0)
        save_state(_checkpoint(t, 0, [], None, 0.0, env, random=False, device=ctx.device), folder.checkpoint(0))

    diverged = None
    t0, ran = time.perf_counter(), 0

    def invocations(elapsed: float) -> list[dict]:  # the earlier invocations' kept parts, and this one's
        return before + [invocation(ran, elapsed, graphs)]

    bar = ctx.bar(range(start, epochs), "pass 1", start, epochs)
    rng_before = rng_state(ctx.device)
    for ep in run_epochs(t, ctx.data, ctx.loss_fn, graphs, bar, sum(map(len, losses))):
        ran += len(ep.losses)
        rng_now = rng_state(ctx.device)
        random_step = random_step or not same_rng(rng_before, rng_now)
        rng_before = rng_now
        if ep.diverged:
            diverged = ep.diverged
            # The iterate that starts the diverging epoch may already give an infinite loss, so
            # theta* is the one that started the epoch before: every loss in that epoch was finite.
            if state_prev is not None:
                t.model.load_state_dict(state_prev)
                losses = losses[:-1]
            else:  # diverged in epoch 0: nothing to measure
                t.model.load_state_dict(ep.state_before)
            break
        state_prev = ep.state_before
        losses.append(ep.losses)
        if ep.epoch + 1 in candidates:
            save_state(copy_state(t.model), folder.star(ep.epoch + 1))
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{ep.losses.mean():.4g}")
        if (ep.epoch + 1) % every == 0 or ep.epoch + 1 == epochs:
            elapsed = time.perf_counter() - t0
            save_state(_checkpoint(t, ep.epoch + 1, losses, state_prev, wall_before + elapsed, env,
                                   invocations(elapsed), random_step, ctx.device), folder.checkpoint(ep.epoch + 1))
    elapsed = time.perf_counter() - t0
    wall, runs = wall_before + elapsed, invocations(elapsed)
    save_state(copy_state(t.model), folder.theta_star)
    fault_point("pass1.theta_star")
    steps = int(sum(map(len, losses)))
    summary = {
        "epochs": len(losses),
        "steps": steps,
        "epoch_steps": [len(x) for x in losses],
        "wall_s": wall,
        "ms_per_step": 1e3 * wall / steps if steps else None,
        "env": env,
        "step_path": merged_step_path(runs),  # over every invocation that ran a kept step
        "invocations": runs,
        "diverged": diverged,
        **({"random_step": True} if random_step else {}),  # only then: deterministic runs keep their pass1.json
        "epoch_mean_loss": [float(x.mean()) for x in losses],
        "theta_star_eval": evaluate(t.model, ctx.data, ctx.loss_fn, setup["batch_size"]) if steps else None,
    }
    folder.write_summary(folder.pass1_json, summary)
    return summary


def _checkpoint(t, epoch: int, losses: list[np.ndarray], model_prev, wall_s: float, env,
                invocations: list[dict] | None = None, random: bool = False, device=None) -> dict:
    """Everything pass 1 needs to go on from ``epoch`` (tensors, dicts, lists and numbers only):
    with the random state the next step draws from, the scheduler's state and whether a step so
    far drew random numbers; and what the invocations so far ran (``invocations``, kept up to
    this checkpoint)."""
    extra = {"scheduler": t.sched.state_dict()} if t.sched is not None else {}
    return {
        **extra,
        "rng": rng_state(device if device is not None else t.flat.flat.device),
        "random_step": bool(random),
        "invocations": invocations or [],
        "epoch": epoch,
        "model": t.model.state_dict(),
        "optimizer": t.opt.state_dict(),
        "sampler": t.sampler.state_dict(),
        "losses": [torch.from_numpy(x) for x in losses],
        "model_prev": model_prev,
        "wall_s": wall_s,
        "env": env,
    }


def extend(ctx: RunContext, p1: dict) -> dict | None:
    """``star_extend``: train on from theta* for a fraction of the epochs more, and keep the end
    point as a later theta* (pass1b.json). A rerun after a crash trains the extension again from
    pass 1's last checkpoint (same bits); None when there is no extension."""
    folder, epochs = ctx.folder, ctx.epochs
    more = ctx.extras.extend_epochs(epochs)
    if not more or p1["diverged"] or not p1["steps"]:
        return None
    if folder.pass1b_json.exists():
        return folder.read_summary(folder.pass1b_json)
    t = ctx.resume(folder.checkpoint(epochs))
    t.model.train()
    graphs = ctx.step_graphs()
    t0, done, why = time.perf_counter(), 0, None
    bar = ctx.bar(range(epochs, epochs + more), "theta* extended", epochs, epochs + more)
    for ep in run_epochs(t, ctx.data, ctx.loss_fn, graphs, bar, p1["steps"]):
        why = ep.diverged
        done += not why
    if not why:
        save_state(copy_state(t.model), folder.theta_star_extended)
    summary = {"epochs": done, "planned_epochs": more, "wall_s": time.perf_counter() - t0,
               "diverged": why, "saved": not why}
    folder.write_summary(folder.pass1b_json, summary)
    return summary


@torch.no_grad()
def evaluate(model: torch.nn.Module, data, loss_fn, batch_size: int) -> dict:
    """The whole data set at the model's parameters, in order, in batches of ``batch_size``: the
    mean loss and, where the loss classifies the model's outputs (:mod:`deep.losses`), the
    accuracy and the largest per-sample cross-entropy; in evaluation mode (BN running statistics,
    no dropout) and in training mode (batch statistics, running statistics untouched, dropout on:
    as ``loss_star`` is taken). Draws nothing from the training's random state (it is restored).
    The model is left in the mode it was in."""
    loss_fn = as_loss(loss_fn)
    was_training = model.training
    out = {"n": len(data), "batch_size": batch_size}
    devices = [data.device] if data.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        for mode in ("eval", "train"):
            model.train(mode == "train")
            total, correct, worst, classified = 0.0, 0, 0.0, True
            with batch_stats_only(model):
                for batch in data.eval_batches(batch_size):
                    pair = loss_fn.classify(model, batch) if classified else None
                    if pair is None:
                        classified = False
                        n = _batch_len(batch)
                        total += float(loss_fn(model, batch)) * n
                        continue
                    logits, y = pair
                    total += float(loss_fn.out_fn(logits, y)) * len(y)
                    correct += int((logits.argmax(1) == y).sum())
                    worst = max(worst, float(F.cross_entropy(logits.float(), y, reduction="none").max()))
            out[mode] = {"loss": total / len(data)}
            if classified:
                out[mode].update(accuracy=correct / len(data), max_sample_cross_entropy=worst)
    model.train(was_training)
    return out


def _batch_len(batch) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    return int(first.shape[0]) if isinstance(first, torch.Tensor) else len(first)


__all__ = ["evaluate", "extend", "pass1"]
