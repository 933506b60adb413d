"""CIFAR model zoo for the gamma-optimization-principle experiments (paper Sec. 3-4).

``build_model(name, num_classes, activation, bn, skip, width)`` builds one of
``MODEL_NAMES``; every model has ``describe() -> dict`` (BN / skip counts, ...).
Knob meanings are documented in ``resnet.py`` and ``vgg.py``; AlexNet has only
``activation`` and ``width``, VGG has no ``skip``.
"""

from .alexnet import AlexNet
from .common import (ACTIVATIONS, BN_SETTINGS, SKIP_SETTINGS, LocalResponseNorm,
                     check_choice, make_activation)
from .resnet import ResNet
from .vgg import VGG

MODEL_NAMES = ("alexnet", "resnet18", "resnet34", "vgg11", "vgg16")

__all__ = ["build_model", "MODEL_NAMES", "ACTIVATIONS", "BN_SETTINGS", "SKIP_SETTINGS",
           "make_activation", "LocalResponseNorm", "AlexNet", "ResNet", "VGG"]


def build_model(name, num_classes, activation="relu", bn="all", skip="all", width=1.0):
    """Build a CIFAR model; raises ``ValueError`` on an unknown or inapplicable knob."""
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
