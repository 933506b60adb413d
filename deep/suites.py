"""The paper's four experiment families as data: suites, presets, and the runs they expand to.

Where the paper states a setting it is used as stated (Sec. 3.1-3.3, 4). Where it is silent,
the choice is written down in ``ASSUMPTIONS`` and copied into every report:

* the ``bn`` and ``optimizer`` suites give no epoch count: 150 epochs, as the two that do;
* "fixed initialization point": one seed (0) for every network's initialization and one for the
  sampler (0), the same across the variants of a network, so variants differ only in the knob;
* no data augmentation and no weight decay (the paper mentions neither, and the principle is
  about the plain SA update);
* the loss is the mean cross-entropy of the mini-batch; the last, smaller batch of an epoch is
  kept (every sample used once per epoch, as Theorem 1's cyclic sampling asks).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

SUITES = ("activation", "bn", "skip", "optimizer")
PRESETS = ("paper", "lite", "cpu", "long", "rate", "smoke")

ASSUMPTIONS = [
    "Epochs of the bn and optimizer suites are not stated in the paper: 150, as the activation and skip suites.",
    "Fixed initialization: seed s for every network and its sampler (s = 0, 1, ... for the preset's seeds). Every "
    "layer is initialized from a random stream keyed by (s, its name), so the variants of a network start from "
    "bitwise the same weights wherever they share a layer; they differ only in the knob.",
    "BN 'first' in each block: ResNet, the BN after the first conv of every BasicBlock (the stem BN stays); "
    "VGG, the BN after the first conv of each run of convs between two max-pools.",
    "Skip 'first' / 'first2' in each block: the residual connection of the first one / two BasicBlocks of each "
    "stage (a stage = the blocks at one resolution); ResNet-18 'first2' equals 'all'.",
    "VGG: the common CIFAR head 512-512-classes with its dropout removed (the paper removes all dropout layers); "
    "convs keep their bias before a BN (VGG-16: 15,253,578 parameters).",
    "AlexNet: Zhang et al.'s CIFAR model on 28x28 center crops (1,387,786 parameters), LRN as in the TensorFlow "
    "tutorial.",
    "No data augmentation, no weight decay, constant learning rate, mean cross-entropy loss.",
    "Every sample is used once per epoch; the last, smaller batch is kept.",
    "BatchNorm layers of theta* use batch statistics in the forward pass that gives loss_star; running statistics untouched.",
]


@dataclass(frozen=True)
class RunSpec:
    """One training run of a suite."""

    network: str
    variant: str  #: the value of the knob the suite varies
    activation: str = "relu"
    bn: str = "all"
    skip: str = "all"
    optimizer: str = "sgd"
    lr: float = 0.05
    batch_size: int = 128
    epochs: int = 150
    width: float = 1.0
    seed: int = 0
    data_seed: int = 0

    @property
    def name(self) -> str:
        """``network-variant``, and ``-sN`` for seed N > 0 (seed 0 keeps the single-seed name)."""
        return f"{self.network}-{self.variant}" + (f"-s{self.seed}" if self.seed else "")

    def to_dict(self) -> dict:
        return asdict(self)


def family(network: str) -> str:
    """``alexnet``, ``resnet`` or ``vgg``: the family a network belongs to (its registry entry's)."""
    from .models import network as entry

    return entry(network).family


@dataclass(frozen=True)
class Preset:
    """How a suite is shrunk. Only width, data and epochs change; every suite keeps the paper's
    optimizer, learning rate, momentum, Adam's eps and batch size (except ``smoke``'s batch)."""

    name: str
    description: str
    #: an int: every run; None: the suite's own (paper) epochs, or with ``network_epochs`` each
    #: network's own for this preset (its registry entry's ``epochs``, deep/models)
    epochs: int | None
    train_subset: int | None  #: class-balanced subset of the training set; None = all
    width: float
    batch_size: int | None  #: None: the paper's 128
    default_dataset: str
    evidence: bool = True  #: False: tests the machinery only, its verdicts are not findings
    seeds: int = 1  #: initializations (and samplers) per configuration, by default
    random_baseline: bool = True  #: judge every path against a random theta* too
    sensitivity: tuple[float, ...] = (0.5, 0.75, 0.9)  #: earlier iterates as theta*, as fractions of the epochs
    network_epochs: bool = False  #: every network's registry entry gives this preset's epochs

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Preset":
        return cls(**{**d, "sensitivity": tuple(d["sensitivity"])})

    def epochs_for(self, network: str, paper_epochs: int) -> int:
        from .models import network as entry

        if self.epochs is not None:
            return self.epochs
        if not self.network_epochs:
            return paper_epochs
        net = entry(network)
        if self.name not in net.epochs:
            raise ValueError(f"network {network!r} gives no epochs for the {self.name} preset; add "
                             f"{self.name!r}: N to the epochs of its entry in deep/models")
        return net.epochs[self.name]


PRESET_TABLE = {
    "paper": Preset("paper", "the paper's protocol: full CIFAR training set, full-width networks, "
                    "150 epochs, batch 128", None, None, 1.0, None, "cifar10"),
    "lite": Preset("lite", "full-width networks on a class-balanced 1,024-image CIFAR-10 subset, batch 128; "
                   "30 epochs for AlexNet and the ResNets, 60 for the VGGs (which learn slower at the paper's "
                   "lr 0.01); sized for the bn and optimizer suites in about 2.5 minutes each on one H100/H200 "
                   "(estimated from the prototype's step costs, not yet measured)",
                   None, 1024, 1.0, None, "cifar10-jpeg", seeds=3, network_epochs=True),
    "cpu": Preset("cpu", "width-1/4 networks on a class-balanced 512-image CIFAR-10 subset, batch 128; "
                  "300 epochs for AlexNet, 40 for the ResNets, 100 for the VGGs (which learn slower at the paper's "
                  "lr 0.01): the paper's hyper-parameters, sized so that the runs with the paper's fast techniques "
                  "converge; one seed of a suite takes about 20 (skip) to 50 minutes (optimizer) on 2 CPU cores "
                  "with the skeptic's checks, so the 3 seeds took 1.1 h (skip) to about 2.4 h (optimizer) in the "
                  "committed reports",
                  None, 512, 0.25, None, "cifar10-jpeg", seeds=3, network_epochs=True),
    "long": Preset("long", "the cpu preset trained three times as long: width-1/4 networks on the same class-balanced "
                   "512-image CIFAR-10 subset, batch 128; 900 epochs for AlexNet, 120 for the ResNets, 300 for the "
                   "VGGs, one seed: so that the variants that do not converge under cpu can, and their gamma orders "
                   "can be decided; a ResNet-18 run with the skeptic's checks and --star-extend 0.25 took about an hour on one core of a busy 2-core machine (pass 1 15 min, the extension 6, pass 2 38)",
                   None, 512, 0.25, None, "cifar10-jpeg", seeds=1, network_epochs=True),
    "rate": Preset("rate", "longer paths for the per-step violation rate of converged runs: width-1/4 networks on a "
                   "class-balanced 2,048-image CIFAR-10 subset, batch 128; 100 epochs for the ResNets and VGGs (1,600 "
                   "steps, 10x the cpu preset's ResNet path), 300 for AlexNet (which needed 150 epochs of 4 steps to "
                   "fit 512 images); one seed; meant for one run at a time (e.g. --suite bn --networks resnet18 "
                   "--variants all)", None, 2048, 0.25, None, "cifar10-jpeg",
                   seeds=1, network_epochs=True),
    "smoke": Preset("smoke", "tiny networks (width 1/8), a class-balanced 256-image subset, 2 epochs, "
                    "batch 64: checks the machinery end to end in minutes on 2 CPU cores; "
                    "its numbers are no evidence about the paper", 2, 256, 0.125, 64, "cifar10-jpeg",
                    evidence=False),
}


@dataclass(frozen=True)
class Suite:
    name: str
    knob: str  #: the RunSpec field the suite varies
    question: str
    #: variants in the paper's expected order of *increasing* gamma and speed (None: no order claimed)
    networks: dict[str, list[str]]
    expected_order: dict[str, list[list[str]]]
    runs: list[RunSpec]
    #: where the paper claims something else on one data set: network -> groups, or None where
    #: it claims no order ("comparable")
    order_by_dataset: dict[str, dict[str, list[list[str]] | None]] = field(default_factory=dict)
    #: the paper's further sentences, per data set ("cifar10", "cifar100"; "any" for both):
    #: equivalences [(network, a, b)] ("a as fast as b"), deeper (shallow, deep, weak, strong),
    #: vanishing [(network, variant)], directions {network: [variants]} (validation/more_claims.py)
    checks: dict[str, dict] = field(default_factory=dict)

    def orders_for(self, dataset: str | None) -> dict[str, list[list[str]]]:
        """The orders the paper claims on ``dataset`` (the JPEG copy counts as CIFAR-10)."""
        key = "cifar10" if dataset == "cifar10-jpeg" else dataset
        orders = {**self.expected_order, **self.order_by_dataset.get(key, {})}
        return {net: groups for net, groups in orders.items() if groups is not None}

    def checks_for(self, dataset: str | None) -> dict:
        """The further sentences the paper states on ``dataset`` (see ``checks``)."""
        key = "cifar10" if dataset == "cifar10-jpeg" else dataset
        return {**self.checks.get("any", {}), **self.checks.get(key, {})}


def _suite_activation() -> Suite:
    acts = ["sigmoid", "tanh", "relu", "leaky_relu"]
    runs = [RunSpec(net, a, activation=a, lr=0.05) for net in ("alexnet", "resnet18") for a in acts]
    return Suite(
        "activation", "activation",
        "Does a ReLU-type activation give a larger gamma and faster convergence than tanh and sigmoid? (Sec. 3.1)",
        {"alexnet": acts, "resnet18": acts},
        # AlexNet: sigmoid slowest, smallest gamma; ResNet-18: sigmoid < tanh < ReLU types
        {"alexnet": [["sigmoid"], ["tanh", "relu", "leaky_relu"]],
         "resnet18": [["sigmoid"], ["tanh"], ["relu", "leaky_relu"]]},
        runs,
    )


def _suite_bn() -> Suite:
    settings = ["none", "first", "all"]
    nets = {"resnet18": 0.05, "resnet34": 0.05, "vgg11": 0.01, "vgg16": 0.01}
    runs = [RunSpec(net, s, bn=s, lr=lr) for net, lr in nets.items() for s in settings]
    return Suite(
        "bn", "bn",
        "Does removing all BN layers give a smaller gamma and slower convergence than keeping them? (Sec. 3.2)",
        {net: settings for net in nets},
        # CIFAR-10 (Fig. 2): no BN is slower with a smaller gamma; one BN per block is as fast as all
        {net: [["none"], ["first", "all"]] for net in nets},
        runs,
        # CIFAR-100 (Fig. 3): all > first > none for the ResNets and VGG-16; VGG-11: first ~ all > none
        {"cifar100": {"resnet18": [["none"], ["first"], ["all"]], "resnet34": [["none"], ["first"], ["all"]],
                      "vgg16": [["none"], ["first"], ["all"]]}},
        # Sec. 3.2: on CIFAR-10 "the trainings that keep the first BN layer in each block converge as fast as
        # those with all BN layers"; on CIFAR-100 so for VGG-11; "vanishing gradient occurs after around 25
        # epochs in the trainings of resnets without any BN layer"
        {"any": {"vanishing": [("resnet18", "none"), ("resnet34", "none")]},
         "cifar10": {"equivalences": [(net, "first", "all") for net in nets]},
         "cifar100": {"equivalences": [("vgg11", "first", "all")]}},
    )


def _suite_skip() -> Suite:
    runs = [RunSpec("resnet18", s, skip=s) for s in ("first", "all")]
    runs += [RunSpec("resnet34", s, skip=s) for s in ("first", "first2", "all")]
    return Suite(
        "skip", "skip",
        "Do more skip connections per block give a larger gamma and faster convergence? (Sec. 3.3)",
        {"resnet18": ["first", "all"], "resnet34": ["first", "first2", "all"]},
        {"resnet18": [["first"], ["all"]], "resnet34": [["first"], ["first2"], ["all"]]},
        runs,
        # Sec. 3.3: on CIFAR-10 ResNet-18 with one skip per block is "comparable" to all skips
        {"cifar10": {"resnet18": None}},
        # ... and "skip connections are more effective in deeper resnets"
        {"any": {"deeper": ("resnet18", "resnet34", "first", "all")},
         "cifar10": {"equivalences": [("resnet18", "first", "all")]}},
    )


def _suite_optimizer() -> Suite:
    opts = ["sgd", "momentum", "adam"]
    nets = ("resnet18", "resnet34", "vgg11", "vgg16")
    runs = [RunSpec(net, o, optimizer=o, lr=0.001) for net in nets for o in opts]
    return Suite(
        "optimizer", "optimizer",
        "Do momentum and Adam give a larger gamma and faster convergence than SGD, Adam the largest? (Sec. 4)",
        {net: opts for net in nets},
        {net: [["sgd"], ["momentum"], ["adam"]] for net in nets},
        runs,
        # App. D.2 / Fig. 12: "the directions of SGD updates are very different from those of the updates
        # generated by the SGD with momentum and Adam"
        checks={"any": {"directions": {net: ["momentum", "adam"] for net in nets}}},
    )


_BUILDERS = {"activation": _suite_activation, "bn": _suite_bn, "skip": _suite_skip, "optimizer": _suite_optimizer}


def get_suite(name: str, preset: str = "paper", seeds: int | None = None,
              networks: tuple[str, ...] | list[str] | None = None,
              variants: tuple[str, ...] | list[str] | None = None) -> Suite:
    """The suite with its runs resolved for ``preset``, each from ``seeds`` initializations
    (default: the preset's), seed-major: every configuration of seed 0, then of seed 1, ...
    ``networks``, ``variants``: only these networks and variants of the suite (None: all).
    ValueError lists the choices."""
    if name not in _BUILDERS:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    if preset not in PRESET_TABLE:
        raise ValueError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    suite = _BUILDERS[name]()
    p = PRESET_TABLE[preset]
    seeds = p.seeds if seeds is None else int(seeds)
    if seeds < 1:
        raise ValueError(f"seeds must be at least 1, got {seeds}")
    runs = [
        replace(r, epochs=p.epochs_for(r.network, r.epochs), width=p.width, batch_size=p.batch_size or r.batch_size,
                seed=s, data_seed=s)
        for s in range(seeds) for r in suite.runs
    ]
    if networks is not None:
        networks = list(dict.fromkeys(networks))
        unknown = [n for n in networks if n not in suite.networks]
        if unknown or not networks:
            raise ValueError(f"the {name} suite has no network {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"choose from {', '.join(suite.networks)}")
        keep = lambda d: {k: v for k, v in d.items() if k in networks}  # noqa: E731
        runs = [r for r in runs if r.network in networks]
        suite = replace(suite, networks=keep(suite.networks), expected_order=keep(suite.expected_order),
                        order_by_dataset={ds: keep(o) for ds, o in suite.order_by_dataset.items()})
    if variants is not None:
        variants = list(dict.fromkeys(variants))
        have = list(dict.fromkeys(v for vs in suite.networks.values() for v in vs))
        unknown = [v for v in variants if v not in have]
        if unknown or not variants:
            raise ValueError(f"the {name} suite has no variant {', '.join(map(repr, unknown)) or '(none given)'}; "
                             f"choose from {', '.join(have)}")
        runs = [r for r in runs if r.variant in variants]
        # an order or comparison needs two variants: what is left of it is kept, the report says what it lacks
        suite = replace(suite, networks={n: [v for v in vs if v in variants] for n, vs in suite.networks.items()
                                         if any(v in variants for v in vs)})
    return replace(suite, runs=runs)
