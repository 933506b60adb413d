"""CIFAR model zoo for the gamma-optimization-principle experiments (paper Sec. 3-4).

``build_model(name, num_classes, activation, bn, skip, width, seed)`` builds one of
``MODEL_NAMES``, initialized by layer name from ``seed`` (``common.init_by_name``: variants
of a network share the weights of every layer they have in common); every model has
``describe() -> dict`` (BN / skip counts, ...).
Knob meanings are documented in ``resnet.py`` and ``vgg.py``; AlexNet has only
``activation`` and ``width``, VGG has no ``skip``.
"""

import torch

from .alexnet import AlexNet
from .common import (ACTIVATIONS, BN_SETTINGS, SKIP_SETTINGS, LocalResponseNorm,
                     check_choice, init_by_name, make_activation)
from .resnet import ResNet
from .vgg import VGG

MODEL_NAMES = ("alexnet", "resnet18", "resnet34", "vgg11", "vgg16")

__all__ = ["build_model", "model_for_run", "MODEL_NAMES", "ACTIVATIONS", "BN_SETTINGS", "SKIP_SETTINGS",
           "make_activation", "init_by_name", "LocalResponseNorm", "AlexNet", "ResNet", "VGG"]


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


def _build(name, num_classes, activation, bn, skip, width):
    check_choice("model name", name, MODEL_NAMES)
    check_choice("activation", activation, ACTIVATIONS)
    check_choice("bn setting", bn, BN_SETTINGS)
    check_choice("skip setting", skip, SKIP_SETTINGS)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
    if not width > 0:
        raise ValueError(f"width must be > 0, got {width!r}")
    if name == "alexnet":
        if bn != "all" or skip != "all":
            raise ValueError("alexnet has no bn or skip knob; leave bn='all', skip='all'")
        return AlexNet(num_classes, activation, width)
    if name.startswith("vgg"):
        if skip != "all":
            raise ValueError(f"{name} has no skip knob; leave skip='all'")
        return VGG(name, num_classes, activation, bn, width)
    return ResNet(name, num_classes, activation, bn, skip, width)
