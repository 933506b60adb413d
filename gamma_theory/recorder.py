"""Recording a path: the trace columns from a live torch model, or from stored iterates.

Two ways to get a :class:`~gamma_theory.trace.Trace`:

* :class:`PathRecorder` works inside any training loop for a known ``theta*`` (pass 2 of a
  measured deep run). It keeps three flat buffers (``theta*``, ``theta_k`` and the new
  iterate), so memory is O(d); the update comes from the parameters alone,
  ``U_k = (theta_k - theta_{k+1}) / eta``, so any optimizer works; the three inner products
  of a step are three reductions over one flat buffer, and results stay on the device until
  :meth:`PathRecorder.flush` (once per epoch).
* :func:`trace_from_iterates` is the store-everything path for small problems: all iterates in
  memory, ``theta*`` the last one unless given. It is also the float64 brute force the tests
  hold the recorder to.

Both compute in float64 by default: the difference of two float32 numbers is exact in float64,
so the recording identity then holds to float64 round-off.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from .trace import Trace


def flatten_params(params: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> torch.Tensor:
    """All parameters as one flat (detached) vector, in ``dtype`` if given."""
    flat = torch.cat([p.detach().reshape(-1) for p in params])
    return flat if dtype is None else flat.to(dtype)


class PathRecorder:
    """Accumulates ``loss, loss_star, inner, update_sq, dist_sq`` step by step.

    Use it around any optimizer::

        rec = PathRecorder(model.parameters(), theta_star, lr)   # snapshot of theta_0
        for x, y in batches:
            loss = loss_fn(model(x), y)
            loss_star = loss_fn(model_star(x), y)                 # same batch, at theta*
            opt.zero_grad(); loss.backward(); opt.step()
            rec.record(loss, loss_star, epoch)                    # reads theta_{k+1}
        trace = rec.trace()

    ``dist0_sq`` defaults to ``||theta_k - theta*||^2`` at construction; pass the path's own
    value when recording starts mid-path (a resumed or parallel segment).
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        theta_star: torch.Tensor,
        lr: float,
        dist0_sq: float | None = None,
        dtype: torch.dtype = torch.float64,
        first_step: int = 0,
    ) -> None:
        self.params = list(params)
        self.lr = float(lr)
        self.dtype = dtype
        self.theta_star = theta_star.detach().reshape(-1).to(dtype=dtype, copy=True)
        self.prev = flatten_params(self.params, dtype)
        if self.prev.shape != self.theta_star.shape:
            raise ValueError(
                f"theta_star has {self.theta_star.numel()} entries but the parameters have "
                f"{self.prev.numel()}"
            )
        diff = self.prev - self.theta_star
        self.dist0_sq = float(torch.dot(diff, diff)) if dist0_sq is None else float(dist0_sq)
        self.next_step = first_step
        self._pending: list[torch.Tensor] = []  # one row of 5 per step, still on the device
        self._epochs: list[int] = []
        self._host: list[np.ndarray] = []

    @torch.no_grad()
    def record(self, loss: torch.Tensor | float, loss_star: torch.Tensor | float, epoch: int = 0) -> None:
        """Record step k; call it right after the optimizer produced ``theta_{k+1}``."""
        cur = flatten_params(self.params, self.dtype)
        a = self.prev - self.theta_star  # theta_k - theta*
        delta = self.prev - cur  # eta * U_k, exact in float64
        row = torch.stack(
            [
                torch.as_tensor(loss, dtype=self.dtype, device=cur.device).detach().reshape(()),
                torch.as_tensor(loss_star, dtype=self.dtype, device=cur.device).detach().reshape(()),
                torch.dot(a, delta) / self.lr,
                torch.dot(delta, delta) / self.lr**2,
                torch.dot(a, a),
            ]
        )
        self._pending.append(row)
        self._epochs.append(int(epoch))
        self.prev = cur

    def flush(self) -> None:
        """Move the recorded rows to the host (one transfer); call once per epoch."""
        if self._pending:
            self._host.append(torch.stack(self._pending).cpu().numpy().astype(np.float64))
            self._pending = []

    def __len__(self) -> int:
        return sum(len(h) for h in self._host) + len(self._pending)

    def trace(self, meta: dict | None = None) -> Trace:
        """The trace of every step recorded so far."""
        self.flush()
        rows = np.concatenate(self._host) if self._host else np.zeros((0, 5))
        n = len(rows)
        return Trace(
            loss=rows[:, 0],
            loss_star=rows[:, 1],
            inner=rows[:, 2],
            update_sq=rows[:, 3],
            dist_sq=rows[:, 4],
            lr=self.lr,
            dist0_sq=self.dist0_sq,
            step=np.arange(self.next_step, self.next_step + n),
            epoch=np.asarray(self._epochs, dtype=np.int64),
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
    meta: dict | None = None,
) -> Trace:
    """Brute-force trace from all iterates ``thetas[0..K]`` (shape ``(K+1, d)``) in float64.

    ``loss[k]`` and ``loss_star[k]`` are the batch losses of step k at ``theta_k`` and
    ``theta*``; ``theta*`` is ``thetas[-1]`` unless given.
    """
    thetas = np.asarray(thetas, dtype=np.float64)
    star = thetas[-1] if theta_star is None else np.asarray(theta_star, dtype=np.float64)
    a = thetas[:-1] - star
    delta = thetas[:-1] - thetas[1:]
    return Trace(
        loss=loss,
        loss_star=loss_star,
        inner=np.einsum("kd,kd->k", a, delta) / lr,
        update_sq=np.einsum("kd,kd->k", delta, delta) / lr**2,
        dist_sq=np.einsum("kd,kd->k", a, a),
        lr=lr,
        dist0_sq=float(np.dot(thetas[0] - star, thetas[0] - star)),
        epoch=epoch,
        sample_gap_max=sample_gap_max,
        meta=dict(meta or {}),
    )
