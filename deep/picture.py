"""The paper's Fig. 12 (appendix D.2): a measured run's path in the plane of its principal
components, the SGD directions along it, and the loss contours of that plane.

Nothing new has to be recorded during the run: :func:`path_picture` replays pass 1 of a finished
run from its initialization (the same bits, on the machine and thread count it ran with), keeps
the iterate that ends every epoch, and checks the replay against the recorded trace: the
distance of every epoch's first iterate to the replayed end point must equal the trace's
``dist_sq`` to float64 round-off. A replay that does not reproduce the run is refused.

Then, following Li et al. (2018), whose method the paper uses:

* the directions are the first two principal components of the (centered) matrix of
  ``theta_e - theta*`` over the epochs e, from its Gram matrix (E x E, float64); the explained
  variance goes on the axes;
* the path is ``((theta_e - theta*) . v_1, (theta_e - theta*) . v_2)``; theta* at the origin;
* the SGD direction at ``theta_e`` is ``-grad f_S(theta_e)``, the full gradient over a stated
  data subset S, projected onto the plane (the arrows show directions; their lengths are scaled
  for display), with its cosine to the run's own next epoch step ``theta_{e+1} - theta_e`` in
  the full space;
* the contours are ``f_S(theta* + a v_1 + b v_2)`` on a grid, in train mode with batch
  statistics (a point off the path has no running statistics of its own).

Memory: the iterates are kept as float32, ``(epochs + 1) x parameters x 4`` bytes (ResNet-18 at
width 1/4 for 40 epochs: 0.1 GB). Cost: one pass 1, plus ``grid^2`` forward passes over S.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from gamma_theory import TraceError, flatten_params, load_trace
from gamma_theory.files import BadFile

from .data import CyclicSampler, DeviceData
from .folder import RunFolder
from .env import deterministic, environment, environment_mismatch
from .step import train_epoch, use_capturable
from .models import model_for_run
from gamma_theory.optimizers import make_optimizer

from .verify import consistent_status, manifest_problem, picture_inputs, read_manifest_file, read_trace_json


class PictureError(ValueError):
    """A run the picture cannot be drawn for; the message says why and what to do."""


@dataclass
class PathPicture:
    name: str
    coords: np.ndarray  #: (E+1, 2) the epoch iterates in the plane, theta* = the last at the origin
    explained: tuple[float, float]  #: share of the variance along v_1, v_2
    sgd_dirs: np.ndarray  #: (E, 2) the projected -grad f_S at theta_e, e < E
    sgd_cos_to_step: np.ndarray  #: (E,) cos(-grad f_S(theta_e), theta_{e+1} - theta_e) in full space
    grid_a: np.ndarray
    grid_b: np.ndarray
    grid_loss: np.ndarray  #: (len(grid_b), len(grid_a))
    replay_max_rel_err: float  #: largest relative difference of the replayed distances from the trace's
    subset: int
    meta: dict
    #: (E,) ||projection of -grad f_S(theta_e) on the plane|| / ||-grad f_S(theta_e)||: how much of each arrow is drawn
    sgd_inplane: np.ndarray = field(default_factory=lambda: np.zeros(0))
    star_loss: float | None = None  #: the subset loss at theta* (the origin of the plane)

    def to_dict(self) -> dict:
        return {
            "name": self.name, "explained_variance": list(self.explained), "coords": self.coords.tolist(),
            "sgd_dirs": self.sgd_dirs.tolist(), "sgd_cos_to_step": self.sgd_cos_to_step.tolist(),
            "mean_sgd_cos_to_step": float(np.mean(self.sgd_cos_to_step)) if self.sgd_cos_to_step.size else None,
            "grid_a": self.grid_a.tolist(), "grid_b": self.grid_b.tolist(), "grid_loss": self.grid_loss.tolist(),
            "replay_max_rel_err": self.replay_max_rel_err, "subset": self.subset, "meta": self.meta,
            "sgd_inplane": self.sgd_inplane.tolist(),
            "mean_sgd_inplane": float(np.mean(self.sgd_inplane)) if self.sgd_inplane.size else None,
            "star_loss": self.star_loss,
        }


def _set_flat(model: torch.nn.Module, flat: torch.Tensor) -> None:
    torch.nn.utils.vector_to_parameters(flat.to(next(model.parameters()).dtype), model.parameters())


def _subset_loss(model: torch.nn.Module, data: DeviceData, idx: torch.Tensor, chunk: int, grad: bool) -> float:
    """Mean cross-entropy over ``idx`` in train mode (batch statistics per chunk); with ``grad``
    the gradient accumulates in ``.grad`` (weighted to the mean over all of ``idx``)."""
    model.train()
    total = 0.0
    for s in range(0, len(idx), chunk):
        x, y = data.batch(idx[s:s + chunk])
        with torch.set_grad_enabled(grad):
            loss = F.cross_entropy(model(x), y, reduction="sum") / len(idx)
            if grad:
                loss.backward()
        total += float(loss.detach())
    return total


def picture_run(run_dir: str | Path):
    """``(info, trace)`` of a finished run folder, after checking everything the replay takes from
    them: ``trace.json``'s shape and what it names (device, threads, network, optimizer), a replay
    length that is the trace's own (and bounded), the trace's digest, and the suite manifest's
    record of both files where there is one; :class:`PictureError` says what is wrong."""
    folder = RunFolder(run_dir)
    run_dir, path = folder.path, folder.trace_json
    rerun = "rerun the suite's `gpcheck deep` command"
    try:
        info = read_trace_json(path)
        consistent_status(info, path)
    except BadFile as exc:
        raise PictureError(f"{exc}; the run is not finished, or its trace.json was changed ({rerun})") from None
    if info.get("status") != "ok":
        raise PictureError(f"{run_dir}: the run {info.get('status')}; the picture is drawn for runs that finished")
    try:
        trace = load_trace(folder.trace_npz)
    except TraceError as exc:
        raise PictureError(f"{exc}; {rerun}") from None
    manifest = folder.suite_manifest
    try:
        entry = (read_manifest_file(manifest).get("runs") or {}).get(run_dir.name) if manifest.is_file() else None
        why = manifest_problem(info, entry)
        if why:
            raise BadFile(path, why)
        picture_inputs(info, path, len(np.unique(trace.epoch)), len(trace))
    except BadFile as exc:
        raise PictureError(f"{exc}; {rerun}") from None
    return info, trace


def path_picture(run_dir: str | Path, data: DeviceData, num_classes: int, grid: int = 21, subset: int = 256,
                 margin: float = 0.25, progress: bool = False) -> PathPicture:
    """Replay the finished run in ``run_dir`` on ``data`` (its training set, as the suite loaded
    it) and compute its picture. :class:`PictureError` says why when it cannot."""
    run_dir = Path(run_dir)
    info, trace = picture_run(run_dir)
    spec, setup = info.get("run") or {}, info.get("setup") or {}
    env = info.get("env") or {}
    here = environment(data.device)
    why = environment_mismatch(run_dir, env, here, "the picture replays the run bit for bit, and it was measured "
                               "with other settings than this process has",
                               "call torch.set_num_threads({n}) first (gpcheck picture sets it from the run itself)")
    if why:
        raise PictureError(why)
    if len(data) != setup.get("n_train"):
        raise PictureError(f"{run_dir}: the run trained on {setup.get('n_train')} images, the data given has "
                           f"{len(data)}")

    def fresh():  # as the run built it (deep/context.py): on its device, in its memory format
        m = model_for_run(spec, num_classes).to(data.device)
        return m.to(memory_format=torch.channels_last) if setup.get("channels_last") else m

    epochs = int(info["epochs_measured"])
    g = torch.Generator().manual_seed(12_345)
    idx = torch.randperm(len(data), generator=g)[:min(subset, len(data))].to(data.device)
    chunk = setup["batch_size"]
    iterates = []
    with deterministic(bool(setup.get("allow_tf32"))):
        model = fresh()
        opt = make_optimizer(spec["optimizer"], model.parameters(), spec["lr"])
        use_capturable(opt, bool(setup.get("cuda_graphs")))  # as the run made it
        sampler = CyclicSampler(len(data), setup["batch_size"], setup["data_seed"])
        iterates.append(flatten_params(list(model.parameters())).float().cpu().clone())
        rng = range(epochs)
        if progress:
            from tqdm import tqdm
            rng = tqdm(rng, desc=f"{run_dir.name} replay", unit="epoch")
        for _ in rng:
            train_epoch(model, opt, sampler, data)
            iterates.append(flatten_params(list(model.parameters())).float().cpu().clone())
    star = iterates[-1].double()
    # the replay must be the run: the distance of each epoch's first iterate to theta*
    starts = np.flatnonzero(np.diff(trace.epoch, prepend=-1))  # the first step of every epoch
    replay = np.array([float(torch.sum((t.double() - star) ** 2)) for t in iterates[:-1]])
    recorded = trace.dist_sq[starts]
    rel = np.abs(replay - recorded) / np.maximum(np.abs(recorded), 1e-300)
    err = float(rel.max()) if rel.size else 0.0
    if not err <= 1e-9:
        raise PictureError(f"{run_dir}: the replay does not reproduce the run (distance to theta* differs from the "
                           f"trace by up to {err:.2e} relative); nothing drawn")

    # principal components of the centered (theta_e - theta*) from their Gram matrix
    X = torch.stack([t.double() - star for t in iterates])  # (E+1, d)
    Xc = X - X.mean(dim=0, keepdim=True)
    gram = (Xc @ Xc.T).numpy()
    lam, vec = np.linalg.eigh(gram)
    order = np.argsort(lam)[::-1]
    lam, vec = lam[order], vec[:, order]
    total = float(lam.clip(min=0).sum())
    if total <= 0 or len(lam) < 2:
        raise PictureError(f"{run_dir}: the path does not span two directions (nothing moved?)")
    dirs = torch.stack([(Xc.T @ torch.from_numpy(vec[:, j])) / math.sqrt(lam[j]) for j in (0, 1)])  # (2, d)
    coords = (X @ dirs.T).numpy()
    explained = (float(lam[0] / total), float(lam[1] / total))

    # SGD directions along the path (full gradient over the subset), and their cosine to the run's step
    scratch = fresh()
    sgd_dirs, cos, inplane = [], [], []
    for e in range(epochs):
        _set_flat(scratch, iterates[e].to(data.device))
        scratch.zero_grad(set_to_none=True)
        _subset_loss(scratch, data, idx, chunk, grad=True)
        gvec = -torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                           for p in scratch.parameters()]).double().cpu()
        sgd_dirs.append((dirs @ gvec).numpy())
        gnorm = float(torch.linalg.vector_norm(gvec))
        inplane.append(float(torch.linalg.vector_norm(dirs @ gvec)) / gnorm if gnorm > 0 else float("nan"))
        step = (iterates[e + 1] - iterates[e]).double()
        denom = float(torch.linalg.vector_norm(gvec) * torch.linalg.vector_norm(step))
        cos.append(float(gvec @ step) / denom if denom > 0 else float("nan"))

    # loss contours over the plane through theta*
    lo, hi = coords.min(axis=0), coords.max(axis=0)
    span = np.maximum(hi - lo, 1e-12)
    ga = np.linspace(lo[0] - margin * span[0], hi[0] + margin * span[0], grid)
    gb = np.linspace(lo[1] - margin * span[1], hi[1] + margin * span[1], grid)
    loss = np.empty((grid, grid))
    cells = [(i, j) for i in range(grid) for j in range(grid)]
    if progress:
        from tqdm import tqdm
        cells = tqdm(cells, desc=f"{run_dir.name} contours", unit="point")
    with torch.no_grad():
        _set_flat(scratch, star.to(data.device))
        star_loss = _subset_loss(scratch, data, idx, chunk, grad=False)
        for i, j in cells:
            _set_flat(scratch, (star + ga[j] * dirs[0] + gb[i] * dirs[1]).to(data.device))
            loss[i, j] = _subset_loss(scratch, data, idx, chunk, grad=False)
    return PathPicture(
        name=run_dir.name, coords=coords, explained=explained, sgd_dirs=np.array(sgd_dirs).reshape(-1, 2),
        sgd_cos_to_step=np.array(cos), grid_a=ga, grid_b=gb, grid_loss=loss, replay_max_rel_err=err,
        subset=len(idx), meta={"run": spec, "epochs": epochs, "grid": grid, "margin": margin,
                               "subset_seed": 12_345, "env": here},
        sgd_inplane=np.array(inplane), star_loss=float(star_loss),
    )
