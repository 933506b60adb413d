"""Algorithmic token data, generated in code (no download): the transformer suite's tasks.

**Modular addition** (Power et al. 2022, "Grokking"; Nanda et al. 2023, "Progress measures for
grokking via mechanistic interpretability"): every pair ``(a, b)`` with ``0 <= a, b < p``, as the
token sequence ``[a, b, EQ]`` with ``EQ = p`` (so the vocabulary has ``p + 1`` tokens), labelled
``(a + b) mod p`` (``p`` classes). A seeded share ``train_fraction`` of the ``p * p`` pairs is the
training set, the rest is held out (the test accuracy that shows grokking).

**Sparse parity** (Barak et al. 2022, "Hidden progress in deep learning"), cheap and optional:
``n`` random bits as tokens 0/1, labelled by the parity of ``k`` fixed secret positions (drawn
from the seed); a seeded number of distinct bit strings is the training set.

Everything is plain int64 CPU tensors, ``x: (N, T)`` and ``y: (N,)``, and deterministic from the
seeds: the split is a ``torch.randperm`` of a CPU ``torch.Generator`` of its own (as the CIFAR
subset and the random labels of ``deep/data.py`` and ``deep/runner.py`` are), so nothing else
(model init, dropout) moves it, and it draws nothing from the global random stream.

``random_labels=True`` permutes the labels of all pairs at random (with ``label_seed``) before the
split: the label histogram is unchanged, but the map from pairs to labels is noise, which a
network can memorize and cannot generalize (the skeptic's check of the CIFAR suites).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

DEFAULT_P = 97
DEFAULT_TRAIN_FRACTION = 0.4
#: the label permutation's default seed when ``random_labels`` is on (as the CIFAR suites' seed 0)
RANDOM_LABELS_SEED = 0

#: salts that keep the split's and the labels' random streams apart for the same seed
_SPLIT_SALT = 0x5EED_0001
_LABEL_SALT = 0x5EED_0002


@dataclass(frozen=True)
class TokenTask:
    """A token classification task, split into training and held-out examples."""

    name: str
    x_train: torch.Tensor  #: int64 (N_train, T)
    y_train: torch.Tensor  #: int64 (N_train,)
    x_test: torch.Tensor  #: int64 (N_test, T)
    y_test: torch.Tensor  #: int64 (N_test,)
    vocab_size: int  #: tokens are 0 .. vocab_size - 1
    num_classes: int  #: labels are 0 .. num_classes - 1
    seq_len: int  #: T
    #: what the task is and how it was split (goes into a trace's metadata)
    meta: dict = field(default_factory=dict)

    def __len__(self):
        return int(self.y_train.numel())

    def as_data(self, device: torch.device | str = "cpu"):
        """``(train, held_out)``: the two splits as :class:`deep.tensordata.TensorData` ``(x, y)``
        on ``device``, ready for :func:`deep.measure.measure` (``loss_fn=outputs(F.cross_entropy)``;
        ``batch(idx)`` gives ``(tokens, labels)``) and for the held-out accuracy."""
        return split_data(self, device)

    def describe(self) -> str:
        m = self.meta
        txt = (f"{self.name}: {len(self)} training and {int(self.y_test.numel())} held-out examples "
               f"(train fraction {m.get('train_fraction')}, split seed {m.get('seed')})")
        if m.get("random_labels"):
            txt += f"; RANDOM LABELS (permuted at random, seed {m.get('label_seed')}: memorizing noise)"
        return txt


def _generator(seed, salt):
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + salt) % (2 ** 63))


def _check_fraction(train_fraction, n):
    if not isinstance(train_fraction, (int, float)) or not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    n_train = int(round(train_fraction * n))
    if not 1 <= n_train <= n - 1:
        raise ValueError(f"train_fraction {train_fraction} of {n} examples leaves no training or no "
                         "held-out example")
    return n_train


def split_indices(n: int, train_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train_idx, test_idx)``: a random permutation of ``range(n)`` from ``seed``, its first
    ``round(train_fraction * n)`` entries for training (each part sorted)."""
    n_train = _check_fraction(train_fraction, n)
    perm = torch.randperm(n, generator=_generator(seed, _SPLIT_SALT))
    return perm[:n_train].sort().values, perm[n_train:].sort().values


def permute_labels(y: torch.Tensor, label_seed: int) -> torch.Tensor:
    """``y`` permuted at random from ``label_seed``: the same labels, shuffled over the examples."""
    return y[torch.randperm(y.numel(), generator=_generator(label_seed, _LABEL_SALT))]


def modular_addition_pairs(p: int = DEFAULT_P) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``p * p`` examples, in order ``a * p + b``: ``x = [a, b, p]`` (int64, (p*p, 3)) and
    ``y = (a + b) mod p`` (int64, (p*p,))."""
    if not isinstance(p, int) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    a = torch.arange(p, dtype=torch.int64).repeat_interleave(p)
    b = torch.arange(p, dtype=torch.int64).repeat(p)
    eq = torch.full_like(a, p)
    return torch.stack([a, b, eq], dim=1), (a + b) % p


def _split(name, x, y, train_fraction, seed, random_labels, label_seed, vocab_size, num_classes, meta):
    if random_labels:
        y = permute_labels(y, label_seed)
    tr, te = split_indices(y.numel(), train_fraction, seed)
    meta = dict(meta, train_fraction=float(train_fraction), seed=int(seed), random_labels=bool(random_labels),
                label_seed=int(label_seed) if random_labels else None, n_train=int(tr.numel()),
                n_test=int(te.numel()))
    return TokenTask(name, x[tr].contiguous(), y[tr].contiguous(), x[te].contiguous(), y[te].contiguous(),
                     vocab_size, num_classes, int(x.shape[1]), meta)


def modular_addition(p: int = DEFAULT_P, train_fraction: float = DEFAULT_TRAIN_FRACTION, seed: int = 0,
                     random_labels: bool = False, label_seed: int = RANDOM_LABELS_SEED) -> TokenTask:
    """``(a + b) mod p`` on all pairs, a share ``train_fraction`` (from ``seed``) for training."""
    x, y = modular_addition_pairs(p)
    return _split(f"modular addition mod {p}", x, y, train_fraction, seed, random_labels, label_seed,
                  vocab_size=p + 1, num_classes=p, meta={"task": "modular_addition", "p": p, "eq_token": p})


def sparse_parity(n_bits: int = 20, k: int = 3, n_examples: int = 4096, train_fraction: float = 0.5,
                  seed: int = 0, random_labels: bool = False,
                  label_seed: int = RANDOM_LABELS_SEED) -> TokenTask:
    """``n_examples`` distinct random bit strings of length ``n_bits`` (tokens 0/1), labelled by the
    parity of ``k`` secret positions; strings, positions and split are drawn from ``seed``."""
    if not (isinstance(n_bits, int) and isinstance(k, int) and 1 <= k <= n_bits <= 62):
        raise ValueError(f"need ints 1 <= k <= n_bits <= 62, got n_bits={n_bits!r}, k={k!r}")
    if not (isinstance(n_examples, int) and 2 <= n_examples <= 2 ** n_bits):
        raise ValueError(f"n_examples must be an int in [2, 2**n_bits], got {n_examples!r}")
    g = _generator(seed, 0x5EED_0003)
    secret = torch.randperm(n_bits, generator=g)[:k].sort().values
    codes: set[int] = set()
    out = []
    while len(out) < n_examples:  # distinct strings, drawn in a fixed order from g
        for c in torch.randint(0, 2 ** n_bits, (n_examples,), generator=g, dtype=torch.int64).tolist():
            if c not in codes and len(out) < n_examples:
                codes.add(c)
                out.append(c)
    codes_t = torch.tensor(out, dtype=torch.int64)
    x = (codes_t[:, None] >> torch.arange(n_bits, dtype=torch.int64)) & 1
    y = x[:, secret].sum(1) % 2
    return _split(f"sparse parity ({k} of {n_bits} bits)", x, y, train_fraction, seed, random_labels,
                  label_seed, vocab_size=2, num_classes=2,
                  meta={"task": "sparse_parity", "n_bits": n_bits, "k": k, "secret": secret.tolist()})


def split_data(task: TokenTask, device: torch.device | str = "cpu"):
    """``(train, held_out)`` of ``task`` as :class:`deep.tensordata.TensorData` ``(x, y)`` on
    ``device``: the training split is what a measured run trains on (``len`` = the training
    examples, ``batch(idx)`` = ``(tokens, labels)``), the held-out split gives the test accuracy."""
    from .tensordata import TensorData

    return (TensorData(task.x_train, task.y_train, device=device),
            TensorData(task.x_test, task.y_test, device=device))


TASKS = {"modular_addition": modular_addition, "sparse_parity": sparse_parity}


def make_task(name: str, **kwargs) -> TokenTask:
    """The task called ``name`` (one of :data:`TASKS`), built with ``kwargs``."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid choices: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)
