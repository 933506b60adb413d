"""CIFAR model zoo for the gamma-optimization-principle experiments (paper Sec. 3-4).

Every network is one entry of :data:`NETWORKS` (a :class:`Network`: its name, family, builder,
the knobs it has, and the epochs the shrunk presets train it for). A new network, or a new
family, is one :func:`register` call (or one more entry below); ``build_model``, the suites'
presets, the trace checks and ``--networks`` all read the registry.

``build_model(name, num_classes, activation, bn, skip, width, seed)`` builds one of
``MODEL_NAMES``, initialized by layer name from ``seed`` (``common.init_by_name``: variants
of a network share the weights of every layer they have in common); every model has
``describe() -> dict`` (BN / skip counts, ...).
Knob meanings are documented in ``resnet.py`` and ``vgg.py``; AlexNet has only
``activation`` and ``width``, VGG has no ``skip``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from .alexnet import AlexNet
from .common import (ACTIVATIONS, BN_SETTINGS, SKIP_SETTINGS, LocalResponseNorm,
                     check_choice, init_by_name, make_activation)
from .resnet import ResNet
from .vgg import VGG

KNOBS = ("activation", "bn", "skip")


@dataclass(frozen=True)
class Network:
    """One network of the zoo: what the suites, presets and checks need to know of it."""

    name: str
    family: str  #: ``resnet``, ``vgg``, ...: networks of a family share their knobs and presets' epochs
    #: ``build(name, num_classes, activation, bn, skip, width) -> nn.Module``, knobs already checked
    build: Callable
    knobs: tuple[str, ...] = KNOBS  #: the knobs it has; any other must stay at "all" (activation: "relu")
    #: epochs per shrunk preset (``lite``, ``cpu``, ``long``, ``rate``); a preset not named here trains the
    #: suite's own (paper) epochs unless the preset fixes one count for every run (``smoke``)
    epochs: Mapping[str, int] = field(default_factory=dict)


def _alexnet(name, num_classes, activation, bn, skip, width):
    return AlexNet(num_classes, activation, width)


def _vgg(name, num_classes, activation, bn, skip, width):
    return VGG(name, num_classes, activation, bn, width)


def _resnet(name, num_classes, activation, bn, skip, width):
    return ResNet(name, num_classes, activation, bn, skip, width)


#: lite/cpu/long epochs of a family: the VGGs learn slower at the paper's lr 0.01 (deep/suites.py)
_ALEXNET_EPOCHS = {"lite": 30, "cpu": 300, "long": 900, "rate": 300}
_RESNET_EPOCHS = {"lite": 30, "cpu": 40, "long": 120, "rate": 100}
_VGG_EPOCHS = {"lite": 60, "cpu": 100, "long": 300, "rate": 100}

NETWORKS: dict[str, Network] = {}


def register(net: Network) -> Network:
    """Add ``net`` to :data:`NETWORKS` (ValueError if its name is taken); returns it."""
    if net.name in NETWORKS:
        raise ValueError(f"a network named {net.name!r} is already registered")
    bad = [k for k in net.knobs if k not in KNOBS]
    if bad:
        raise ValueError(f"{net.name}: unknown knob(s) {', '.join(bad)}; knobs are {', '.join(KNOBS)}")
    NETWORKS[net.name] = net
    return net


for _net in (
    Network("alexnet", "alexnet", _alexnet, ("activation",), _ALEXNET_EPOCHS),
    Network("resnet18", "resnet", _resnet, KNOBS, _RESNET_EPOCHS),
    Network("resnet34", "resnet", _resnet, KNOBS, _RESNET_EPOCHS),
    Network("vgg11", "vgg", _vgg, ("activation", "bn"), _VGG_EPOCHS),
    Network("vgg16", "vgg", _vgg, ("activation", "bn"), _VGG_EPOCHS),
):
    register(_net)


class _Names(Sequence):
    """The registered names, read when used (so a network registered later is in it)."""

    def __init__(self, table: Mapping):
        self._table = table

    def __getitem__(self, i):
        return tuple(self._table)[i]

    def __len__(self):
        return len(self._table)

    def __contains__(self, x):
        return x in self._table

    def __eq__(self, other):
        return tuple(self) == tuple(other) if isinstance(other, Sequence) else NotImplemented

    def __hash__(self):
        return hash(tuple(self))

    def __repr__(self):
        return repr(tuple(self))


MODEL_NAMES = _Names(NETWORKS)

__all__ = ["build_model", "model_for_run", "network", "register", "Network", "NETWORKS", "MODEL_NAMES",
           "ACTIVATIONS", "BN_SETTINGS", "SKIP_SETTINGS", "make_activation", "init_by_name", "LocalResponseNorm",
           "AlexNet", "ResNet", "VGG"]


def network(name: str) -> Network:
    """The registry entry of ``name``; ValueError lists the registered networks."""
    check_choice("model name", name, MODEL_NAMES)
    return NETWORKS[name]


def build_model(name, num_classes, activation="relu", bn="all", skip="all", width=1.0, seed=0):
    """Build a CIFAR model initialized from ``seed`` by layer name; raises ``ValueError`` on an
    unknown or inapplicable knob. Draws nothing from the global random stream."""
    with torch.random.fork_rng(devices=[]):  # the constructors' own default init draws from it
        model = _build(name, num_classes, activation, bn, skip, width)
    return init_by_name(model, seed)


def model_for_run(spec, num_classes):
    """The model of a run, from its :class:`deep.suites.RunSpec` or the ``run`` dict a
    ``trace.json`` holds: what the runner trains and what ``gpcheck picture`` replays."""
    get = spec.get if isinstance(spec, dict) else (lambda k: getattr(spec, k))
    return build_model(get("network"), num_classes, get("activation"), get("bn"), get("skip"), get("width"),
                       get("seed"))


_DEFAULTS = {"activation": "relu", "bn": "all", "skip": "all"}


def _build(name, num_classes, activation, bn, skip, width):
    net = network(name)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("bn setting", bn, BN_SETTINGS)
    check_choice("skip setting", skip, SKIP_SETTINGS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    given = {"activation": activation, "bn": bn, "skip": skip}
    absent = [k for k in KNOBS if k not in net.knobs and given[k] != _DEFAULTS[k]]
    if absent:
        missing = [k for k in KNOBS if k not in net.knobs]
        raise ValueError(f"{name} has no {' or '.join(missing)} knob; leave "
                         + ", ".join(f"{k}={_DEFAULTS[k]!r}" for k in missing))
    return net.build(name, num_classes, activation, bn, skip, width)
