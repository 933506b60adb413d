"""Building blocks shared by the CIFAR model families.

* ``make_activation(name)`` -- the four nonlinearities of the paper's Sec. 3.1
  (leaky ReLU with slope 1e-2, as in the paper).
* ``LocalResponseNorm`` -- numerically the same as ``torch.nn.LocalResponseNorm``
  on 4-D input, but built from ops whose CUDA backward is deterministic
  (torch's version uses ``avg_pool3d``, whose CUDA backward raises under
  ``torch.use_deterministic_algorithms(True)``).
* ``scaled(channels, width)`` -- the width multiplier used by every family.
* ``init_by_name(model, seed)`` -- torch's default initialization of every layer, drawn from a
  random stream keyed by ``(seed, the layer's name)``, so the variants of a network (with or
  without BN, skips, another activation) start from the same weights wherever they share a layer.
"""

import hashlib

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = ("sigmoid", "tanh", "relu", "leaky_relu")
BN_SETTINGS = ("all", "first", "none")
SKIP_SETTINGS = ("all", "first", "first2")

LEAKY_RELU_SLOPE = 0.01


def check_choice(kind, value, choices):
    """Raise ``ValueError`` listing ``choices`` if ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"unknown {kind} {value!r}; valid choices: {', '.join(choices)}")
    return value


def make_activation(name):
    """Return a fresh activation module: sigmoid, tanh, relu or leaky_relu (slope 0.01)."""
    check_choice("activation", name, ACTIVATIONS)
    if name == "sigmoid":
        return nn.Sigmoid()
    if name == "tanh":
        return nn.Tanh()
    if name == "relu":
        return nn.ReLU()
    return nn.LeakyReLU(LEAKY_RELU_SLOPE)


def scaled(channels, width):
    """Channel/hidden count multiplied by ``width``, rounded, at least 1."""
    return max(1, int(round(channels * width)))


def layer_seed(seed, name):
    """A 63-bit seed for the layer called ``name`` (its qualified module name) of a model seeded
    with ``seed``: the same for the same pair, on every machine and Python (no ``hash()``)."""
    digest = hashlib.sha256(f"{int(seed)}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def init_by_name(model, seed):
    """Re-initialize every layer of ``model`` with its own ``reset_parameters`` (torch's default
    init), drawn from the CPU generator seeded with :func:`layer_seed`; returns ``model``.

    A layer's draw depends on nothing but ``seed`` and its name: not on the layers built before
    it, nor on whether a BN or a shortcut exists elsewhere. So the variants of a network share
    every tensor they have in common. A conv's bias is drawn after its weight, so the weight is
    the same with or without a bias. The global random state is left as it was.
    """
    with torch.random.fork_rng(devices=[]):
        for name, m in model.named_modules():
            if hasattr(m, "reset_parameters") and any(True for _ in m.parameters(recurse=False)):
                torch.manual_seed(layer_seed(seed, name))
                m.reset_parameters()
    return model


def count_bn(module):
    """Number of BatchNorm2d layers inside ``module``."""
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def count_params(module):
    return sum(p.numel() for p in module.parameters())


class LocalResponseNorm(nn.Module):
    """Cross-channel LRN, equal to ``torch.nn.LocalResponseNorm(size, alpha, beta, k)``.

    ``b_c = a_c / (k + alpha/size * sum_{c'} a_{c'}^2) ** beta`` with the sum over
    channels ``c - size//2 .. c + (size-1)//2`` (zero outside), exactly torch's
    window.  The windowed mean is an ``avg_pool2d`` with kernel ``(size, 1)`` over
    an ``(N, 1, C, H*W)`` view of ``a**2``, zero-padded over channels with a
    constant ``F.pad``; both have deterministic CUDA backward passes.
    """

    def __init__(self, size, alpha=1e-4, beta=0.75, k=1.0):
        super().__init__()
        self.size, self.alpha, self.beta, self.k = int(size), float(alpha), float(beta), float(k)

    def forward(self, x):
        if x.dim() != 4:
            raise ValueError(f"LocalResponseNorm expects 4-D input, got {x.dim()}-D")
        n, c, h, w = x.shape
        sq = (x * x).reshape(n, 1, c, h * w)
        sq = F.pad(sq, (0, 0, self.size // 2, (self.size - 1) // 2))  # zeros over channels
        mean = F.avg_pool2d(sq, (self.size, 1), stride=1).reshape(n, c, h, w)
        return x / (mean * self.alpha + self.k).pow(self.beta)

    def extra_repr(self):
        return f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
