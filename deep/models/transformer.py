"""A small decoder-only transformer for algorithmic token tasks (the transformer suite, issue 23).

Written plainly, one op at a time, so every op has a deterministic kernel on the CPU and on CUDA
(matmuls, softmax, LayerNorm, GELU/ReLU, elementwise ops; no fused attention, no index-scatter
backward):

    tokens x (B, T) int64
    h = onehot(x) @ W_tok + W_pos[:T]                       token and learned position embeddings
    for each of n_layers blocks:                            (d_model, n_heads, d_mlp = 4 * d_model)
        attention: q, k, v = h W_q, h W_k, h W_v (per head); s = q k^T / sqrt(d_head),
                   future positions set to -inf, a = softmax(s) (dropout), out = (a v) W_o (dropout)
        MLP:       fc2(act(fc1(h))) (dropout)
    logits = unembed(h[:, -1])                              (B, num_classes): the last position only

The token embedding is a one-hot matmul (its backward is a matmul, deterministic everywhere; an
index-gather's backward is a scatter-add). Because the logits read only the last position, the
last block computes its query, attention output and MLP for the last position alone (keys and
values for all positions): the same logits as computing every position, with about half the
multiply-adds of a 1-layer model (``tests/test_transformer.py`` holds it to the full computation).

Knobs, the analogues of the paper's CIFAR knobs:

* ``norm`` (the bn suite's analogue): ``none`` (no LayerNorm), ``post`` (``h = LN(h + f(h))``, the
  original transformer), ``pre`` (``h = h + f(LN(h))`` and a final LN before the unembedding, GPT-2).
* ``residual`` (the skip suite's analogue): ``all`` (every sublayer adds to the residual stream) or
  ``none`` (``h = f(h)``, and with ``post``: ``h = LN(f(h))``; with ``pre``: ``h = f(LN(h))``).
* ``activation`` (the activation suite's analogue): ``relu`` or ``gelu`` (exact, erf form).
* ``dropout``: the probability of the dropout on the embeddings, the attention weights and each
  sublayer's output; at 0 (the default) there is no dropout module at all, so nothing draws from
  any random stream in the forward pass.

Initialization: torch's default for the ``nn.Linear`` and ``nn.LayerNorm`` layers, and
``N(0, 1/d_model)`` for the token and position embeddings (as Nanda et al. 2023), every layer drawn
by :func:`deep.models.common.init_by_name` from a stream keyed by the seed and the layer's name.
Layer names do not depend on the knobs (``blocks.0.attn.q``, ``blocks.0.mlp.fc1``, ``blocks.0.ln1``,
...), so variants start from the same weights wherever they share a layer; the LayerNorms exist
only where ``norm`` puts them.

The family is kept out of ``deep.models.NETWORKS``: that registry is built for CIFAR images
(``build_model(name, num_classes, activation, bn, skip, width, seed)``, knobs limited to
activation/bn/skip with the CIFAR activations and bn settings, and the tests and plan tables that
iterate over it feed 3x32x32 images and expect FLOP tables for every entry). :data:`TRANSFORMERS`
is this family's own registry and :func:`build_transformer` its builder.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .common import check_choice, count_params, init_by_name

NORMS = ("none", "post", "pre")
RESIDUALS = ("all", "none")
ACTIVATIONS = ("relu", "gelu")


class Embedding(nn.Module):
    """A ``(num, dim)`` table read as ``onehot(x) @ weight`` (deterministic backward: a matmul);
    initialized ``N(0, 1/dim)``."""

    def __init__(self, num, dim):
        super().__init__()
        self.num, self.dim = int(num), int(dim)
        self.weight = nn.Parameter(torch.empty(self.num, self.dim))
        self.reset_parameters()

    def reset_parameters(self):
        nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.dim))

    def forward(self, x):
        if x.dtype != torch.int64:
            raise TypeError(f"token ids must be int64, got {x.dtype}")
        return F.one_hot(x, self.num).to(self.weight.dtype) @ self.weight

    def extra_repr(self):
        return f"{self.num}, {self.dim}"


def _dropout(p):
    return nn.Dropout(p) if p > 0 else nn.Identity()


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention, written out: ``softmax(q k^T / sqrt(d_head) + mask) v``."""

    def __init__(self, d_model, n_heads, max_len, dropout=0.0):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model {d_model} is not a multiple of n_heads {n_heads}")
        self.d_model, self.n_heads, self.d_head = d_model, n_heads, d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.o = nn.Linear(d_model, d_model)
        self.attn_drop = _dropout(dropout)
        self.out_drop = _dropout(dropout)
        # future[i, j]: position i may not see position j > i (a buffer, not a parameter)
        self.register_buffer("future", torch.ones(max_len, max_len, dtype=torch.bool).triu(1), persistent=False)

    def _heads(self, t):  # (B, S, d) -> (B, H, S, d_head)
        b, s, _ = t.shape
        return t.reshape(b, s, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, h, last_only=False):
        """``h``: (B, T, d). Returns (B, T, d), or (B, 1, d) for the last position alone if
        ``last_only`` (the same numbers as the last row of the full output)."""
        b, t, _ = h.shape
        hq = h[:, -1:] if last_only else h
        q, k, v = self._heads(self.q(hq)), self._heads(self.k(h)), self._heads(self.v(h))
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_head)  # (B, H, Tq, T)
        mask = self.future[t - 1:t, :t] if last_only else self.future[:t, :t]
        scores = scores.masked_fill(mask, float("-inf"))
        att = self.attn_drop(torch.softmax(scores, dim=-1))
        out = (att @ v).transpose(1, 2).reshape(b, hq.shape[1], self.d_model)
        return self.out_drop(self.o(out))


class MLP(nn.Module):
    def __init__(self, d_model, d_mlp, activation, dropout=0.0):
        super().__init__()
        self.fc1 = nn.Linear(d_model, d_mlp)
        self.fc2 = nn.Linear(d_mlp, d_model)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()
        self.drop = _dropout(dropout)

    def forward(self, h):
        return self.drop(self.fc2(self.act(self.fc1(h))))


class Block(nn.Module):
    """One transformer block with the ``norm`` and ``residual`` knobs (see the module docstring)."""

    def __init__(self, d_model, n_heads, d_mlp, max_len, norm, residual, activation, dropout):
        super().__init__()
        self.norm, self.residual = norm, residual
        self.attn = CausalSelfAttention(d_model, n_heads, max_len, dropout)
        self.mlp = MLP(d_model, d_mlp, activation, dropout)
        if norm != "none":
            self.ln1 = nn.LayerNorm(d_model)
            self.ln2 = nn.LayerNorm(d_model)

    def forward(self, h, last_only=False):
        res = self.residual == "all"
        if self.norm == "pre":
            a = self.attn(self.ln1(h), last_only)
            h = (h[:, -1:] if last_only else h) + a if res else a
            m = self.mlp(self.ln2(h))
            return h + m if res else m
        a = self.attn(h, last_only)
        h = (h[:, -1:] if last_only else h) + a if res else a
        if self.norm == "post":
            h = self.ln1(h)
        h = h + self.mlp(h) if res else self.mlp(h)
        return self.ln2(h) if self.norm == "post" else h


class Transformer(nn.Module):
    """Decoder-only transformer: ``forward(x: int64 (B, T)) -> logits (B, num_classes)`` read at
    the last position. Build it with :func:`build_transformer` (initialized by layer name)."""

    def __init__(self, vocab_size, num_classes, seq_len, n_layers=1, d_model=128, n_heads=4, d_mlp=None,
                 norm="none", residual="all", activation="relu", dropout=0.0):
        super().__init__()
        check_choice("norm setting", norm, NORMS)
        check_choice("residual setting", residual, RESIDUALS)
        check_choice("activation", activation, ACTIVATIONS)
        for what, v in (("vocab_size", vocab_size), ("num_classes", num_classes), ("seq_len", seq_len),
                        ("n_layers", n_layers), ("d_model", d_model), ("n_heads", n_heads)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{what} must be a positive int, got {v!r}")
        d_mlp = 4 * d_model if d_mlp is None else d_mlp
        if not isinstance(d_mlp, int) or d_mlp < 1:
            raise ValueError(f"d_mlp must be a positive int, got {d_mlp!r}")
        if not (isinstance(dropout, (int, float)) and 0 <= dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        self.vocab_size, self.num_classes, self.seq_len = vocab_size, num_classes, seq_len
        self.n_layers, self.d_model, self.n_heads, self.d_mlp = n_layers, d_model, n_heads, d_mlp
        self.norm, self.residual, self.activation, self.dropout = norm, residual, activation, float(dropout)
        self.tok = Embedding(vocab_size, d_model)
        self.pos = Embedding(seq_len, d_model)
        self.emb_drop = _dropout(dropout)
        self.blocks = nn.ModuleList(Block(d_model, n_heads, d_mlp, seq_len, norm, residual, activation, dropout)
                                    for _ in range(n_layers))
        if norm == "pre":
            self.ln_f = nn.LayerNorm(d_model)
        self.unembed = nn.Linear(d_model, num_classes)

    def embed(self, x):
        if x.dim() != 2:
            raise ValueError(f"expected token ids of shape (B, T), got {tuple(x.shape)}")
        t = x.shape[1]
        if not 1 <= t <= self.seq_len:
            raise ValueError(f"sequence length {t} is not in 1..{self.seq_len}")
        pos = torch.arange(t, device=x.device)
        return self.emb_drop(self.tok(x) + self.pos(pos))

    def forward(self, x):
        h = self.embed(x)
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            h = block(h, last_only=i == last)
        h = h[:, -1]
        if self.norm == "pre":
            h = self.ln_f(h)
        return self.unembed(h)

    def describe(self):
        res = self.residual == "all"
        return {
            "family": "transformer",
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_heads": self.n_heads,
            "d_mlp": self.d_mlp,
            "vocab_size": self.vocab_size,
            "seq_len": self.seq_len,
            "num_classes": self.num_classes,
            "norm": self.norm,
            "residual": self.residual,
            "activation": self.activation,
            "dropout": self.dropout,
            "num_layernorm": sum(isinstance(m, nn.LayerNorm) for m in self.modules()),
            "num_active_residuals": 2 * self.n_layers if res else 0,
            "readout": "last position",
            "num_params": count_params(self),
        }


@dataclass(frozen=True)
class TransformerNet:
    """One entry of :data:`TRANSFORMERS`: a name and its depth and width."""

    name: str
    n_layers: int
    d_model: int = 128
    n_heads: int = 4
    d_mlp: int | None = None  #: None: 4 * d_model


TRANSFORMERS: dict[str, TransformerNet] = {
    "transformer1": TransformerNet("transformer1", 1),
    "transformer2": TransformerNet("transformer2", 2),
}


def build_transformer(name="transformer1", vocab_size=98, num_classes=97, seq_len=3, norm="none",
                      residual="all", activation="relu", dropout=0.0, seed=0, d_model=None, n_heads=None,
                      d_mlp=None):
    """Build a registered transformer, initialized from ``seed`` by layer name (variants share the
    weights of every layer they have in common). ``d_model``/``n_heads``/``d_mlp`` override the
    entry's. Draws nothing from the global random stream."""
    check_choice("transformer", name, tuple(TRANSFORMERS))
    net = TRANSFORMERS[name]
    with torch.random.fork_rng(devices=[]):  # the constructors' own default init draws from it
        model = Transformer(vocab_size, num_classes, seq_len, net.n_layers,
                            net.d_model if d_model is None else d_model,
                            net.n_heads if n_heads is None else n_heads,
                            net.d_mlp if d_mlp is None else d_mlp,
                            norm, residual, activation, dropout)
    return init_by_name(model, seed)
