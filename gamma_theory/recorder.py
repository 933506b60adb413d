"""Recording a path: the trace columns from a live torch model, or from stored iterates.

Two ways to get a :class:`~gamma_theory.trace.Trace`:

* :class:`PathRecorder` works inside any training loop for known minimizers (pass 2 of a
  measured deep run). It records against one ``theta*`` or several at once (the real one, a
  random baseline, earlier iterates for a sensitivity check), each until a step of its own. The
  update comes from the parameters alone, ``U_k = (theta_k - theta_{k+1}) / eta``, so any
  optimizer works. Every inner product of a step is one float64 reduction: the Gram matrix of
  ``M = [delta; g; theta_k - theta*_1; ...; theta_k - theta*_m]`` (``delta = eta_k U_k``, ``g`` the
  stochastic gradient when it is recorded), taken over fixed chunks of the entries so that the
  float64 temporaries stay small. With the parameters in one flat buffer
  (:class:`~gamma_theory.flat.FlatParams`) nothing is copied per step. Results stay on the device until
  :meth:`PathRecorder.flush` (once per epoch): nothing syncs the host inside an epoch.
  Under a learning-rate schedule, pass each step's ``eta_k`` (``record(..., lr=eta_k)``, or
  ``lr=optimizer`` to read it from the optimizer's ``param_groups``): ``U_k`` is then
  ``(theta_k - theta_{k+1}) / eta_k`` and the trace gets the ``eta`` column. Without it every
  step uses the constructor's ``lr``, and the trace is byte for byte what it always was.
* :func:`trace_from_iterates` is the store-everything path for small problems: all iterates in
  memory, ``theta*`` the last one unless given. It is also the float64 brute force the tests
  hold the recorder to.

Both compute in float64 by default: the difference of two float32 numbers is exact in float64
(for numbers within 2^29 of each other in magnitude), so the recording identity then holds to
float64 round-off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .flat import FlatParams, default_chunk, gram, sq_dist
from .trace import Trace


def flatten_params(params: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """All parameters as one flat (detached) vector, in ``dtype`` if given."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return flat if dtype is None else flat.to(dtype)


#: a recorded row: [loss, update_sq, grad_sq] + for every theta*: [loss_star, inner, dist_sq, grad_inner]
BASE, PER_STAR = 3, 4


class PathRecorder:
    """Accumulates ``loss, loss_star, inner, update_sq, dist_sq`` (and optionally the gradient's
    ``grad_inner, grad_sq``) step by step, for one ``theta*`` or several.

    Use it around any optimizer::

        rec = PathRecorder(model.parameters(), theta_star, lr)   # snapshot of theta_0
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss_star = loss_fn(model_star(x), y)                 # same batch, at theta*
            opt.zero_grad(); loss.backward()
            rec.capture_grad()                                    # only with record_grad=True
            opt.step()
            rec.record(loss, loss_star, epoch)                    # reads theta_{k+1}
            # with a schedule: rec.record(loss, loss_star, epoch, lr=opt) before sched.step()
        trace = rec.trace()

    ``lr``: the base learning rate, ``eta_k`` of every step recorded without its own ``lr``
    (see :meth:`record`).

    ``params``: the parameters (concatenated at every step), or a
    :class:`~gamma_theory.flat.FlatParams`, whose buffer *is* ``theta_k`` (no copy per step; with
    :meth:`~gamma_theory.flat.FlatParams.flat_grads`, the gradient buffer is read in place too, so
    the optimizer must not change the gradients in place, as torch's SGD and Adam do not).
    ``theta_star`` is held, not copied (in the flat layout when ``params`` is flat): do not change
    it while recording. The recorder keeps one copy of ``theta_k`` in the parameters' dtype (the
    difference of two float32 numbers is exact in float64) and computes in float64 over chunks of
    ``chunk`` entries (default by device: :func:`gamma_theory.flat.default_chunk`), so its float64 temporaries stay a chunk's.

    Several minimizers: ``theta_star`` of shape ``(m, d)``, with ``until[j]`` the step (exclusive)
    from which ``theta*_j`` is no longer recorded. They must come in order of decreasing
    ``until``, so that the active ones are always the first :meth:`n_active`; ``record`` then takes
    one ``loss_star`` per active ``theta*``. ``trace(j)`` is the path of the steps before
    ``until[j]`` judged against ``theta*_j``.

    ``dist0_sq`` (one value, or one per ``theta*``) defaults to ``||theta_k - theta*_j||^2`` at
    construction; pass the path's own values when recording starts mid-path (a resumed segment).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | FlatParams,
        theta_star: torch.Tensor,
        lr: float,
        dist0_sq: float | Sequence[float] | None = None,
        first_step: int = 0,
        until: Sequence[int | None] | None = None,
        record_grad: bool = False,
        chunk: int | None = None,
    ) -> None:
        self.flat = params if isinstance(params, FlatParams) else None
        self.params = self.flat.params if self.flat is not None else list(params)
        self.lr = float(lr)
        stars = theta_star.detach()
        self.stars = stars.reshape(1, -1) if stars.dim() <= 1 else stars.reshape(stars.shape[0], -1)
        self.prev = self._theta().clone()
        self.chunk = int(chunk or default_chunk(self.prev.device))
        if self.prev.numel() != self.stars.shape[1]:
            raise ValueError(
                f"theta_star has {self.stars.shape[1]} entries but the parameters have {self.prev.numel()}"
            )
        m = self.stars.shape[0]
        self.until = [None] * m if until is None else [None if u is None else int(u) for u in until]
        if len(self.until) != m:
            raise ValueError(f"until has {len(self.until)} entries for {m} theta*")
        keys = [np.inf if u is None else u for u in self.until]
        if keys != sorted(keys, reverse=True):
            raise ValueError("theta* must come in order of decreasing 'until'")
        if dist0_sq is None:
            self.dist0_sq = [float(v) for v in sq_dist(self.prev, self.stars, self.chunk)]
        else:
            self.dist0_sq = [float(v) for v in np.broadcast_to(np.asarray(dist0_sq, dtype=np.float64), (m,))]
        self.record_grad = bool(record_grad)
        self._grad: torch.Tensor | None = None
        rows = 1 + self.record_grad + m
        self._workspace = torch.empty(rows, min(self.chunk, self.prev.numel()), dtype=torch.float64,
                                      device=self.prev.device)
        self.first_step = int(first_step)
        self.next_step = self.first_step
        self._pending: list[torch.Tensor] = []  # one row per step, still on the device
        self._epochs: list[int] = []
        self._etas: list[float] = []  # eta_k of every step (the base lr unless a step gave its own)
        self._host: list[np.ndarray] = []

    def _theta(self) -> torch.Tensor:
        """``theta`` now: the flat buffer itself, or the parameters concatenated."""
        return self.flat.flat if self.flat is not None else flatten_params(self.params)

    @property
    def num_stars(self) -> int:
        return self.stars.shape[0]

    def n_active(self, step: int | None = None) -> int:
        """How many ``theta*`` are recorded at ``step`` (default: the next step)."""
        step = self.next_step if step is None else step
        return sum(u is None or step < u for u in self.until)

    @torch.no_grad()
    def capture_grad(self) -> None:
        """Keep the stochastic gradient ``g_k``: call after backward, before the optimizer step."""
        if self.flat is not None and self.flat.grad is not None:
            self._grad = self.flat.grad  # read in place at record()
            return
        self._grad = torch.cat([
            (p.grad.detach() if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params
        ])

    @torch.no_grad()
    def record(self, loss: torch.Tensor | float, loss_star, epoch: int = 0, lr=None) -> None:
        """Record step k; call it right after the optimizer produced ``theta_{k+1}``.

        ``loss_star``: the loss at each active ``theta*`` on this step's batch (a scalar when
        there is one). ``lr``: ``eta_k``, the learning rate this step was taken with, under a
        schedule: a number, or the optimizer itself (its ``param_groups``' one learning rate,
        read now: record before ``scheduler.step()`` moves it to ``eta_{k+1}``); default the
        constructor's ``lr``. The same as ``push(row(loss, loss_star, eta), epoch, eta)``."""
        eta = None if lr is None else lr_of(lr)
        self.push(self.row(loss, loss_star, eta), epoch, eta)

    @torch.no_grad()
    def row(self, loss: torch.Tensor | float, loss_star, lr: float | torch.Tensor | None = None) -> torch.Tensor:
        """The device half of :meth:`record`: step k's row of the trace (a float64 tensor on the
        parameters' device, see ``BASE``/``PER_STAR``), and ``theta_{k+1}`` kept for the next
        step. It runs only device work with fixed shapes, no host sync and no indexed
        assignment, so it can be captured in a CUDA graph with the training step
        (:mod:`deep.graphs`); every replay then computes the row of its own step, which
        :meth:`push` (the host half, not captured) appends.

        ``lr``: ``eta_k`` (default the constructor's ``lr``); inside a CUDA graph a 0-d float64
        tensor on the device, which the caller sets before each replay (a number would be baked
        into the graph), and then :meth:`push` gets the same ``eta_k`` as a number."""
        eta = self.lr if lr is None else lr
        if not isinstance(eta, torch.Tensor):
            eta = float(eta)
            if not (np.isfinite(eta) and eta > 0):
                raise ValueError(f"step {self.next_step}: the learning rate must be a positive number, got {eta}; "
                                 "a step with eta_k = 0 does not move theta and has no U_k: do not record it")
        active = self.n_active()
        ls = [loss_star] if not isinstance(loss_star, (list, tuple)) else list(loss_star)
        if len(ls) != active:
            raise ValueError(f"step {self.next_step}: {len(ls)} losses at theta* for {active} active theta*")
        if self.record_grad and self._grad is None:
            raise ValueError("record_grad=True: call capture_grad() between backward and the optimizer step")
        cur = self._theta()
        vecs: list = [(self.prev, cur)]  # delta = eta U_k, exact in float64
        if self.record_grad:
            vecs.append(self._grad)
        off = len(vecs)
        if active:
            vecs.append((self.prev, self.stars[:active]))  # theta_k - theta*_j
        G = gram(vecs, self.chunk, self._workspace)  # every inner product of the step
        dev, f64 = G.device, torch.float64

        def scalar(x):
            return torch.as_tensor(x, dtype=f64, device=dev).detach().reshape(())

        def nan(*shape):
            return torch.full(shape, float("nan"), dtype=f64, device=dev)

        # [loss, update_sq, grad_sq] + per theta*: [loss_star, inner, dist_sq, grad_inner]
        parts = [torch.stack([scalar(loss), G[0, 0] / eta**2, G[1, 1] if self.record_grad else nan()])]
        if active:
            on = slice(off, off + active)
            per_star = [torch.stack([scalar(x) for x in ls]), G[0, on] / eta, torch.diagonal(G)[on],
                        G[1, on] if self.record_grad else nan(active)]
            parts.append(torch.stack(per_star, dim=1).reshape(-1))
        if active < self.num_stars:
            parts.append(nan(PER_STAR * (self.num_stars - active)))
        self.prev.copy_(cur)
        return torch.cat(parts)

    def push(self, row: torch.Tensor, epoch: int = 0, lr: float | None = None) -> None:
        """The host half of :meth:`record`: append step k's ``row`` (kept as given: pass a copy of
        a tensor that will be overwritten, such as a CUDA graph's output) and move on to step k+1.
        ``lr``: the ``eta_k`` the row was computed with (default the constructor's ``lr``)."""
        eta = self.lr if lr is None else lr_of(lr)
        if not (np.isfinite(eta) and eta > 0):
            raise ValueError(f"step {self.next_step}: the learning rate must be a positive number, got {eta}")
        self._pending.append(row)
        self._epochs.append(int(epoch))
        self._etas.append(eta)
        self._grad = None
        self.next_step += 1

    def flush(self) -> None:
        """Move the recorded rows to the host (one transfer); call once per epoch."""
        if self._pending:
            self._host.append(torch.stack(self._pending).cpu().numpy().astype(np.float64))
            self._pending = []

    def __len__(self) -> int:
        return sum(len(h) for h in self._host) + len(self._pending)

    def rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(rows, step, epoch)`` of every step recorded so far (rows: see ``BASE``, ``PER_STAR``)."""
        self.flush()
        width = BASE + PER_STAR * self.num_stars
        rows = np.concatenate(self._host) if self._host else np.zeros((0, width))
        return rows, np.arange(self.first_step, self.first_step + len(rows)), np.asarray(self._epochs, dtype=np.int64)

    def etas(self, always: bool = False) -> np.ndarray | None:
        """``eta_k`` of every step recorded so far, or None when every step used the base ``lr``
        (a constant-lr path: its trace has no ``eta`` column, as before schedules existed).
        ``always``: the array even then (to store beside :meth:`rows` and join segments; give the
        joined array to :func:`trace_from_rows`, which drops a constant one)."""
        eta = np.asarray(self._etas, dtype=np.float64)
        return eta if always or not (eta == self.lr).all() else None

    def trace(self, j: int = 0, meta: dict | None = None) -> Trace:
        """The trace of the steps recorded so far against ``theta*_j``."""
        rows, step, epoch = self.rows()
        return trace_from_rows(rows, step, epoch, j, self.lr, self.dist0_sq[j], self.until[j],
                               self.record_grad, meta, eta=self.etas())


def lr_of(lr) -> float:
    """``eta_k`` as a number: ``lr`` itself, a 0-d tensor's value, or the one learning rate of an
    optimizer's ``param_groups`` (a ``torch.optim.Optimizer``, or anything with ``param_groups``).

    Groups with different learning rates are refused: the SA form ``theta_{k+1} = theta_k - eta_k
    U_k`` of the paper has one scalar ``eta_k`` per step, and dividing each group by its own rate
    is another ``U_k``, which no checker here assumes."""
    groups = getattr(lr, "param_groups", None)
    if groups is not None:
        rates = {float(g["lr"]) for g in groups}
        if len(rates) != 1:
            raise ValueError(f"the optimizer's param_groups have {len(rates)} learning rates ({sorted(rates)}); "
                             "pass the step's eta_k as a number: the paper's step has one scalar learning rate")
        return rates.pop()
    if isinstance(lr, torch.Tensor):
        return float(lr.detach().reshape(()).item())
    return float(lr)


def trace_from_rows(rows: np.ndarray, step: np.ndarray, epoch: np.ndarray, j: int, lr: float, dist0_sq: float,
                    until: int | None = None, has_grad: bool = False, meta: dict | None = None,
                    eta: np.ndarray | None = None) -> Trace:
    """The trace against ``theta*_j`` from a :class:`PathRecorder`'s rows: the steps before ``until``.
    ``eta``: ``eta_k`` of every row when a schedule set them (:meth:`PathRecorder.etas`), or None;
    an ``eta`` equal to ``lr`` on every kept row gives the trace without the column."""
    keep = slice(None) if until is None else step < until
    r, c = rows[keep], BASE + PER_STAR * j
    if eta is not None:
        eta = np.asarray(eta, dtype=np.float64)[keep]
        if (eta == float(lr)).all():
            eta = None  # a constant schedule is the constant-lr trace
    return Trace(
        loss=r[:, 0], loss_star=r[:, c], inner=r[:, c + 1], update_sq=r[:, 1], dist_sq=r[:, c + 2],
        lr=lr, dist0_sq=dist0_sq, step=step[keep], epoch=epoch[keep],
        grad_inner=r[:, c + 3] if has_grad else None, grad_sq=r[:, 2] if has_grad else None,
        eta=eta,
        meta=dict(meta or {}),
    )


def trace_from_iterates(
    thetas: np.ndarray,
    loss: np.ndarray,
    loss_star: np.ndarray,
    lr: float,
    epoch: np.ndarray | None = None,
    theta_star: np.ndarray | None = None,
    sample_gap_max: np.ndarray | None = None,
    grads: np.ndarray | None = None,
    meta: dict | None = None,
    eta: np.ndarray | None = None,
) -> Trace:
    """Brute-force trace from all iterates ``thetas[0..K]`` (shape ``(K+1, d)``) in float64.

    ``loss[k]`` and ``loss_star[k]`` are the batch losses of step k at ``theta_k`` and
    ``theta*``; ``theta*`` is ``thetas[-1]`` unless given; ``grads[k]`` (optional, shape
    ``(K, d)``) the stochastic gradient of step k. ``eta`` (optional, shape ``(K,)``): the
    learning rate of every step under a schedule, so ``U_k = (theta_k - theta_{k+1}) / eta_k``;
    ``lr`` is then the base rate the trace records (an ``eta`` equal to ``lr`` everywhere is the
    constant-lr trace, without the column).
    """
    if eta is not None:
        eta = np.asarray(eta, dtype=np.float64).reshape(-1)
        if (eta == float(lr)).all():
            eta = None
    thetas = np.asarray(thetas, dtype=np.float64)
    if eta is not None and len(eta) != len(thetas) - 1:
        raise ValueError(f"eta has {len(eta)} entries for {len(thetas) - 1} steps")
    rate = lr if eta is None else eta  # the constant lr: the same operations, so the same bits, as before
    star = thetas[-1] if theta_star is None else np.asarray(theta_star, dtype=np.float64)
    a = thetas[:-1] - star
    delta = thetas[:-1] - thetas[1:]
    g = None if grads is None else np.asarray(grads, dtype=np.float64)
    return Trace(
        loss=loss,
        loss_star=loss_star,
        inner=np.einsum("kd,kd->k", a, delta) / rate,
        update_sq=np.einsum("kd,kd->k", delta, delta) / rate**2,
        dist_sq=np.einsum("kd,kd->k", a, a),
        lr=lr,
        dist0_sq=float(np.dot(thetas[0] - star, thetas[0] - star)),
        epoch=epoch,
        sample_gap_max=sample_gap_max,
        grad_inner=None if g is None else np.einsum("kd,kd->k", g, a),
        grad_sq=None if g is None else np.einsum("kd,kd->k", g, g),
        meta=dict(meta or {}),
        **({} if eta is None else {"eta": eta}),
    )


