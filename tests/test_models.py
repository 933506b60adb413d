"""Tests for deep.models: parameter counts, knobs, BN/skip counts, LRN, determinism."""

import pytest
import torch
import torch.nn as nn

from deep.models import (ACTIVATIONS, BN_SETTINGS, MODEL_NAMES, SKIP_SETTINGS,
                         LocalResponseNorm, build_model, make_activation)
from deep.models.alexnet import LRN_ALPHA, LRN_BETA, LRN_K, LRN_SIZE

TINY = 0.125

# Every valid (name, bn, skip) combination.
KNOB_GRID = (
    [("alexnet", "all", "all")]
    + [(n, b, "all") for n in ("vgg11", "vgg16") for b in BN_SETTINGS]
    + [(n, b, s) for n in ("resnet18", "resnet34") for b in BN_SETTINGS for s in SKIP_SETTINGS]
)

# Expected counts, derived by hand:
#   resnet18: stem 1 + 8 blocks * 2 + 3 projections = 20; first: 1 + 8 = 9
#   resnet34: stem 1 + 16 blocks * 2 + 3 projections = 36; first: 1 + 16 = 17
#   vgg11: 8 convs in runs (1,1,2,2,2); vgg16: 13 convs in runs (2,2,3,3,3); first: 5
EXPECTED_BN = {
    ("resnet18", "all"): 20, ("resnet18", "first"): 9, ("resnet18", "none"): 0,
    ("resnet34", "all"): 36, ("resnet34", "first"): 17, ("resnet34", "none"): 0,
    ("vgg11", "all"): 8, ("vgg11", "first"): 5, ("vgg11", "none"): 0,
    ("vgg16", "all"): 13, ("vgg16", "first"): 5, ("vgg16", "none"): 0,
    ("alexnet", "all"): 0,
}
EXPECTED_BN_PER_STAGE = {
    ("resnet18", "all"): [4, 5, 5, 5], ("resnet18", "first"): [2, 2, 2, 2],
    ("resnet34", "all"): [6, 9, 13, 7], ("resnet34", "first"): [3, 4, 6, 3],
    ("vgg11", "all"): [1, 1, 2, 2, 2], ("vgg11", "first"): [1, 1, 1, 1, 1],
    ("vgg16", "all"): [2, 2, 3, 3, 3], ("vgg16", "first"): [1, 1, 1, 1, 1],
}
EXPECTED_SKIPS = {
    ("resnet18", "all"): 8, ("resnet18", "first"): 4, ("resnet18", "first2"): 8,
    ("resnet34", "all"): 16, ("resnet34", "first"): 4, ("resnet34", "first2"): 8,
}
EXPECTED_SKIPS_PER_STAGE = {
    ("resnet34", "all"): [3, 4, 6, 3], ("resnet34", "first"): [1, 1, 1, 1],
    ("resnet34", "first2"): [2, 2, 2, 2],
}


def _forward_backward(model, num_classes, channels_last=False):
    x = torch.randn(2, 3, 32, 32)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.to(memory_format=torch.channels_last)
    out = model(x)
    assert out.shape == (2, num_classes)
    assert torch.isfinite(out).all()
    nn.functional.cross_entropy(out, torch.tensor([0, num_classes - 1])).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name


# ---------------------------------------------------------------- parameter counts
@pytest.mark.parametrize("name,expected", [
    # ResNets: the standard CIFAR counts. VGGs: kuangliu's 14,728,266 (VGG-16) plus the two
    # 512-wide hidden layers of the head the paper removed dropout from (2 x 262,656), less the
    # 512 -> 10 layer it replaces (5,130 -> same size, so: + 525,312).
    ("resnet18", 11_173_962), ("resnet34", 21_282_122), ("vgg16", 14_728_266 + 525_312),
    ("vgg11", 9_231_114 + 525_312), ("alexnet", 1_387_786),
])
def test_reference_parameter_counts(name, expected):
    model = build_model(name, 10)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert model.describe()["num_params"] == expected


def test_alexnet_layers_and_parameter_count():
    m = build_model("alexnet", 10)
    # 28x28 center crop -> 14 -> 7 after the two pools:
    # conv1 3*64*25+64, conv2 64*64*25+64, fc 3136*384+384, 384*192+192, 192*10+10
    expected = 4864 + 102464 + 1204608 + 73920 + 1930
    assert m.describe()["num_params"] == expected == 1_387_786  # Zhang et al. (2017)
    assert m.describe()["num_lrn"] == 2
    lrn = [mod for mod in m.modules() if isinstance(mod, LocalResponseNorm)][0]
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (9, 0.001, 0.75, 1.0)


def test_width_scales_and_no_buffers_are_parameters():
    for name in MODEL_NAMES:
        full = build_model(name, 10).describe()["num_params"]
        tiny = build_model(name, 10, width=TINY).describe()["num_params"]
        assert tiny < full / 20
    assert build_model("vgg11", 10, width=1e-6).classifier.fc1.in_features == 1


# ---------------------------------------------------------------- forward/backward
@pytest.mark.parametrize("num_classes", [10, 100])
@pytest.mark.parametrize("name,bn,skip", KNOB_GRID)
def test_every_knob_setting_trains(name, bn, skip, num_classes):
    torch.manual_seed(0)
    model = build_model(name, num_classes, bn=bn, skip=skip, width=TINY)
    _forward_backward(model, num_classes)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_every_activation_channels_last(name, activation):
    torch.manual_seed(0)
    model = build_model(name, 100, activation=activation, width=TINY)
    _forward_backward(model, 100, channels_last=True)
    acts = {type(make_activation(activation))}
    found = {type(m) for m in model.modules()
             if isinstance(m, (nn.Sigmoid, nn.Tanh, nn.ReLU, nn.LeakyReLU))}
    assert found == acts


def test_make_activation():
    x = torch.tensor([-2.0, 0.0, 3.0])
    assert torch.equal(make_activation("leaky_relu")(x), torch.tensor([-0.02, 0.0, 3.0]))
    assert torch.equal(make_activation("relu")(x), torch.tensor([0.0, 0.0, 3.0]))


# ---------------------------------------------------------------- BN and skip counts
@pytest.mark.parametrize("name,bn,skip", KNOB_GRID)
def test_bn_and_skip_counts(name, bn, skip):
    m = build_model(name, 10, bn=bn, skip=skip, width=TINY)
    d = m.describe()
    assert d["num_bn"] == EXPECTED_BN[(name, bn)]
    assert d["num_bn"] == sum(isinstance(x, nn.BatchNorm2d) for x in m.modules())
    if (name, bn) in EXPECTED_BN_PER_STAGE:
        assert d["bn_per_stage"] == EXPECTED_BN_PER_STAGE[(name, bn)]
    assert d["num_active_skips"] == EXPECTED_SKIPS.get((name, skip), 0)
    if (name, skip) in EXPECTED_SKIPS_PER_STAGE:
        assert d["active_skips_per_stage"] == EXPECTED_SKIPS_PER_STAGE[(name, skip)]


@pytest.mark.parametrize("name,bn", [(n, b) for n in ("resnet18", "resnet34", "vgg11", "vgg16")
                                     for b in BN_SETTINGS])
def test_conv_bias_rule(name, bn):
    m = build_model(name, 10, bn=bn, width=TINY)
    mods = list(m.modules())
    for i, conv in enumerate(mods):
        if not isinstance(conv, nn.Conv2d):
            continue
        if name.startswith("vgg"):  # as torchvision's vgg*_bn: always biased
            assert conv.bias is not None
            continue
        followed_by_bn = isinstance(mods[i + 1], nn.BatchNorm2d)
        assert (conv.bias is None) == followed_by_bn


def test_resnet_bn_first_keeps_exactly_bn1():
    m = build_model("resnet34", 10, bn="first", width=TINY)
    assert isinstance(m.bn1, nn.BatchNorm2d)
    for stage in m.stages():
        for block in stage:
            assert isinstance(block.bn1, nn.BatchNorm2d)
            assert not isinstance(block.bn2, nn.BatchNorm2d)
            assert block.conv2.bias is not None
            if isinstance(block.shortcut, nn.Sequential):
                assert len(block.shortcut) == 2 and block.shortcut[0].bias is not None
                assert not isinstance(block.shortcut[1], nn.BatchNorm2d)


@pytest.mark.parametrize("bn", BN_SETTINGS)
def test_block_without_skip_does_not_add_input(bn):
    torch.manual_seed(0)
    m = build_model("resnet18", 10, bn=bn, skip="first", width=TINY).eval()
    with_skip, without_skip = m.layer1[0], m.layer1[1]
    assert with_skip.skip and not without_skip.skip and without_skip.shortcut is None
    for block in (with_skip, without_skip):
        with torch.no_grad():
            for conv in (block.conv1, block.conv2):
                conv.weight.zero_()
                if conv.bias is not None:
                    conv.bias.zero_()
    x = torch.rand(2, with_skip.conv1.in_channels, 8, 8) + 0.5  # positive: relu(x) == x
    with torch.no_grad():
        # Residual branch is exactly 0 (eval BN with fresh stats maps 0 -> 0).
        assert torch.equal(without_skip(x), torch.zeros_like(x))  # relu(0), no + x
        assert torch.allclose(with_skip(x), x)  # relu(0 + x)


def test_skip_first2_resnet18_equals_all():
    a = build_model("resnet18", 10, skip="first2", width=TINY).describe()
    assert a["num_active_skips"] == 8 and a["active_skips_per_stage"] == [2, 2, 2, 2]


# ---------------------------------------------------------------- LRN
@pytest.mark.parametrize("size,alpha,beta,k", [
    (LRN_SIZE, LRN_ALPHA, LRN_BETA, LRN_K), (5, 1e-4, 0.75, 2.0), (4, 0.3, 0.5, 1.0),
    (1, 0.1, 0.75, 1.0), (2, 1.0, 1.0, 0.5), (40, 0.5, 0.75, 1.0),
])
def test_lrn_matches_torch(size, alpha, beta, k):
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5, 7, dtype=torch.float64) * 3
    ref = nn.LocalResponseNorm(size, alpha, beta, k)(x)
    ours = LocalResponseNorm(size, alpha, beta, k)
    assert len(list(ours.parameters())) == 0
    assert torch.allclose(ours(x), ref, rtol=0, atol=1e-6)
    xc = x.to(memory_format=torch.channels_last)
    assert torch.allclose(ours(xc), ref, rtol=0, atol=1e-6)


def test_lrn_gradient_matches_torch():
    x = torch.randn(2, 12, 4, 4, dtype=torch.float64, requires_grad=True)
    g_ref, = torch.autograd.grad(nn.LocalResponseNorm(9, 0.001, 0.75, 1.0)(x).sum(), x)
    g, = torch.autograd.grad(LocalResponseNorm(9, 0.001, 0.75, 1.0)(x).sum(), x)
    assert torch.allclose(g, g_ref, rtol=0, atol=1e-10)


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,choices", [
    (dict(name="resnet50"), MODEL_NAMES),
    (dict(name="resnet18", activation="gelu"), ACTIVATIONS),
    (dict(name="resnet18", bn="last"), BN_SETTINGS),
    (dict(name="resnet18", skip="none"), SKIP_SETTINGS),
])
def test_invalid_choices_raise_with_choices(kwargs, choices):
    with pytest.raises(ValueError) as exc:
        build_model(num_classes=10, **kwargs)
    for c in choices:
        assert c in str(exc.value)


@pytest.mark.parametrize("name,kwargs", [
    ("alexnet", dict(bn="none")), ("alexnet", dict(skip="first")),
    ("vgg11", dict(skip="first")), ("vgg16", dict(skip="first2")),
])
def test_inapplicable_knob_raises(name, kwargs):
    with pytest.raises(ValueError, match=f"{name} has no"):
        build_model(name, 10, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(width=0), dict(width=-1.0), dict(num_classes=0)])
def test_bad_numbers_raise(kwargs):
    kwargs = {"num_classes": 10, **kwargs}
    with pytest.raises(ValueError):
        build_model("vgg11", **kwargs)


def test_make_activation_invalid():
    with pytest.raises(ValueError, match="leaky_relu"):
        make_activation("swish")


# ---------------------------------------------------------------- determinism
@pytest.fixture
def deterministic():
    prev, prev_warn = (torch.are_deterministic_algorithms_enabled(),
                       torch.is_deterministic_algorithms_warn_only_enabled())
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(prev, warn_only=prev_warn)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_deterministic_mode_forward_backward(name, deterministic):
    def run():
        torch.manual_seed(1)
        model = build_model(name, 10, width=TINY)
        _forward_backward(model, 10, channels_last=True)
        return [p.grad.clone() for p in model.parameters()]

    assert torch.are_deterministic_algorithms_enabled()
    g1, g2 = run(), run()
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ---------------------------------------------------------------- shared initialization
VARIANTS = {
    "alexnet": [dict(activation=a) for a in ACTIVATIONS],
    "resnet18": [dict(bn=b, skip=s, activation=a) for b in BN_SETTINGS for s in SKIP_SETTINGS
                 for a in ("relu", "sigmoid")],
    "resnet34": [dict(bn=b, skip=s) for b in BN_SETTINGS for s in SKIP_SETTINGS],
    "vgg11": [dict(bn=b, activation=a) for b in BN_SETTINGS for a in ("relu", "tanh")],
    "vgg16": [dict(bn=b) for b in BN_SETTINGS],
}


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_variants_start_from_the_same_weights(name):
    """Every tensor two variants share (same name) is bitwise equal, whatever the knobs; the
    conv weights are shared by every variant, BN or not, skip or not."""
    states = [build_model(name, 10, width=TINY, seed=7, **k).state_dict() for k in VARIANTS[name]]
    ref = states[0]
    for knobs, st in zip(VARIANTS[name][1:], states[1:]):
        shared = [k for k in st if k in ref]
        assert all(torch.equal(st[k], ref[k]) for k in shared), knobs
    conv_weights = [k for k, v in ref.items() if k.endswith("weight") and v.dim() == 4]
    assert conv_weights and all(all(k in st for k in conv_weights) for st in states)


def test_seed_changes_the_weights_and_the_global_stream_is_untouched():
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a = build_model("resnet18", 10, width=TINY, seed=0)
    after = torch.rand(3)
    assert torch.equal(before, after)  # building a model draws nothing from the global stream
    b = build_model("resnet18", 10, width=TINY, seed=1)
    c = build_model("resnet18", 10, width=TINY, seed=0)
    assert not torch.equal(a.conv1.weight, b.conv1.weight)
    assert all(torch.equal(x, y) for x, y in zip(a.parameters(), c.parameters()))


def test_init_by_name_keeps_torch_default_distribution():
    """The re-drawn conv weight is torch's kaiming-uniform(a=sqrt(5)): |w| <= 1/sqrt(fan_in)."""
    m = build_model("vgg16", 10, seed=3)
    w = m.features.conv5_3.weight
    bound = 1 / (w.shape[1] * 9) ** 0.5
    assert w.abs().max() <= bound and w.abs().max() > 0.95 * bound


def test_model_for_run_builds_the_runs_model_from_a_spec_or_its_dict():
    """The runner (RunSpec) and `gpcheck picture` (trace.json's run dict) get bitwise the same model."""
    from deep.models import model_for_run
    from deep.suites import get_suite

    for spec in get_suite("bn", "smoke").runs[:3]:
        want = build_model(spec.network, 10, spec.activation, spec.bn, spec.skip, spec.width, spec.seed)
        for given in (spec, spec.to_dict()):
            got = model_for_run(given, 10)
            assert [n for n, _ in got.named_parameters()] == [n for n, _ in want.named_parameters()]
            assert all(torch.equal(a, b) for a, b in zip(got.parameters(), want.parameters()))
