"""The two-pass measured run on the CPU: bitwise replay, brute-force columns, resume, refusal."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep.data import CyclicSampler, DeviceData
from deep.losses import outputs
from deep.measure import RemeasureWarning, ReplayMismatch, RunMismatch, batch_stats_only, measure
from deep.state import load_state, save_state
from gamma_theory import check_trace, flatten_params, trace_from_iterates
from gamma_theory.optimizers import make_optimizer


@pytest.fixture(autouse=True)
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


class Interruptible(torch.nn.Module):
    """Counts forward passes across instances (per subclass) and raises KeyboardInterrupt at the
    ``interrupt_at``-th one: lets a test interrupt a run anywhere in pass 1 or pass 2."""

    calls, interrupt_at = 0, None

    def forward(self, x):
        cls = type(self)
        cls.calls += 1
        if cls.interrupt_at is not None and cls.calls >= cls.interrupt_at:
            cls.interrupt_at = None
            raise KeyboardInterrupt
        return self.body(x)


class TinyCNN(Interruptible):
    calls, interrupt_at = 0, None

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)
        self.fc = torch.nn.Linear(4, 3)

    def body(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def tiny_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 3, (n,), generator=g)
    return DeviceData(images, labels)


def run(tmp, opt="momentum", lr=0.1, epochs=2, **kw):
    return measure(TinyCNN, lambda p: make_optimizer(opt, p, lr), tiny_data(), lr=lr, epochs=epochs,
                   batch_size=16, workdir=tmp, seed=3, data_seed=5, progress=False, **kw)


def brute_force(opt, lr, epochs):
    """An independent training loop that stores every iterate; float64 columns from them."""
    data = tiny_data()
    torch.manual_seed(3)
    model = TinyCNN()
    optim = make_optimizer(opt, model.parameters(), lr)
    sampler = CyclicSampler(len(data), 16, 5)
    thetas, losses, batches, epoch = [flatten_params(list(model.parameters()), torch.float64)], [], [], []
    for e in range(epochs):
        for idx in sampler.next_epoch():
            x, y = data.batch(idx)
            loss = F.cross_entropy(model(x), y)
            optim.zero_grad(); loss.backward(); optim.step()
            losses.append(loss.item()); batches.append((x, y)); epoch.append(e)
            thetas.append(flatten_params(list(model.parameters()), torch.float64))
    star = TinyCNN()
    star.load_state_dict(model.state_dict())
    star.bn.momentum = 0.0
    with torch.no_grad():
        loss_star = [F.cross_entropy(star(x), y).item() for x, y in batches]
    return trace_from_iterates(torch.stack(thetas).numpy(), np.array(losses), np.array(loss_star), lr,
                               epoch=np.array(epoch)), model


@pytest.mark.parametrize("opt", ["sgd", "momentum", "adam"])
def test_columns_equal_float64_brute_force(tmp_path, opt):
    lr = 0.01 if opt == "adam" else 0.1
    res = run(tmp_path / opt, opt=opt, lr=lr)
    ref, model = brute_force(opt, lr, 2)
    tr = res.trace
    assert res.status == "ok" and len(tr) == 6  # 40 samples, batch 16: 16 + 16 + 8, two epochs
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq"):
        np.testing.assert_allclose(getattr(tr, col), getattr(ref, col), rtol=1e-12, atol=1e-15, err_msg=col)
    np.testing.assert_array_equal(tr.epoch, [0, 0, 0, 1, 1, 1])
    # pass 1 equals the independent loop bit for bit: same theta*
    star = torch.load(tmp_path / opt / "theta_star.pt")
    assert all(torch.equal(star[n], p) for n, p in model.state_dict().items())
    assert check_trace(tr).identity.holds
    assert tr.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert tr.meta["steps_per_epoch"] == 3


def test_second_call_loads_and_checkpoints_are_pruned(tmp_path):
    a = run(tmp_path, epochs=3, checkpoint_every=1)
    assert not list((tmp_path / "checkpoints").glob("*.pt"))
    b = run(tmp_path, epochs=3, checkpoint_every=1)
    np.testing.assert_array_equal(a.trace.inner, b.trace.inner)


@pytest.mark.parametrize("at", [5, 12, 20])  # pass 1 has 9 forwards in 3 epochs, pass 2 has 18
def test_interrupted_run_resumes_to_identical_trace(tmp_path, at):
    full = run(tmp_path / "full", epochs=3, checkpoint_every=1)
    TinyCNN.calls, TinyCNN.interrupt_at = 0, at
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "cut", epochs=3, checkpoint_every=1)
    TinyCNN.interrupt_at = None
    resumed = run(tmp_path / "cut", epochs=3, checkpoint_every=1)
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq", "step", "epoch"):
        np.testing.assert_array_equal(getattr(resumed.trace, col), getattr(full.trace, col), err_msg=col)


def _pass1_only(run_dir):
    """Pass 1 alone: interrupt at the first forward of pass 2 (pass 1 = 2 epochs x 3 steps)."""
    TinyCNN.calls, TinyCNN.interrupt_at = 0, 7
    with pytest.raises(KeyboardInterrupt):
        run(run_dir, checkpoint_every=1)
    TinyCNN.interrupt_at = None


def test_replay_that_disagrees_with_an_intact_checkpoint_is_a_mismatch(tmp_path):
    """An intact checkpoint (its digest written with it) that pass 2 does not reproduce: the
    training is not deterministic here, and the run says so with the epoch and the deviation."""
    run_dir = tmp_path / "t"
    _pass1_only(run_dir)
    ck = run_dir / "checkpoints" / "epoch0001.pt"
    st = load_state(ck)
    st["model"]["fc.bias"][0] += 1e-3
    save_state(st, ck)
    with pytest.raises(ReplayMismatch, match=r"epoch 1: largest parameter deviation 1\.0\d*e-03"):
        run(run_dir, checkpoint_every=1)


@pytest.mark.parametrize("damage", ["flip", "truncate", "digest", "delete"])
def test_damaged_checkpoint_is_never_trusted_and_the_run_is_remeasured(tmp_path, damage):
    """A checkpoint altered on disk is caught by its digest, named, and the run measured again:
    the trace is bit-identical to an undisturbed run."""
    clean = run(tmp_path / "clean", checkpoint_every=1)
    run_dir = tmp_path / "t"
    _pass1_only(run_dir)
    ck = run_dir / "checkpoints" / "epoch0000.pt"  # pass 2 starts here
    data = ck.read_bytes()
    if damage == "flip":
        ck.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    elif damage == "truncate":
        ck.write_bytes(data[: len(data) // 2])
    elif damage == "digest":
        (run_dir / "checkpoints" / "epoch0000.pt.sha256").unlink()
    else:
        ck.unlink()
    with pytest.warns(RemeasureWarning, match="epoch0000.pt"):
        again = run(run_dir, checkpoint_every=1)
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq"):
        np.testing.assert_array_equal(getattr(again.trace, col), getattr(clean.trace, col))


def test_pass1_resumes_from_an_earlier_checkpoint_when_the_newest_is_damaged(tmp_path):
    clean = run(tmp_path / "clean", epochs=3, checkpoint_every=1)
    TinyCNN.calls, TinyCNN.interrupt_at = 0, 7  # in pass 1's third epoch: checkpoints 0, 1, 2 exist
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "t", epochs=3, checkpoint_every=1)
    TinyCNN.interrupt_at = None
    ck = tmp_path / "t" / "checkpoints" / "epoch0002.pt"
    ck.write_bytes(ck.read_bytes()[:50])
    with pytest.warns(RemeasureWarning, match="epoch0002.pt is truncated.*earlier checkpoint"):
        again = run(tmp_path / "t", epochs=3, checkpoint_every=1)
    np.testing.assert_array_equal(again.trace.inner, clean.trace.inner)


def test_theta_star_is_evaluated_on_the_whole_training_set(tmp_path):
    res = run(tmp_path, epochs=2)
    ev = res.trace.meta["theta_star_eval"]
    star = TinyCNN()
    star.load_state_dict(torch.load(tmp_path / "theta_star.pt"))
    data = tiny_data()
    x, y = data.batch(torch.arange(len(data)))
    star.eval()
    with torch.no_grad():
        logits = star(x)
    assert ev["n"] == 40
    assert ev["eval"]["accuracy"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))
    assert ev["eval"]["loss"] == pytest.approx(float(F.cross_entropy(logits, y)), rel=1e-6)
    assert ev["eval"]["max_sample_cross_entropy"] == pytest.approx(
        float(F.cross_entropy(logits, y, reduction="none").max()), rel=1e-6)
    assert 0 < ev["train"]["loss"] and ev["train"]["loss"] != ev["eval"]["loss"]  # batch statistics


def test_theta_star_forward_uses_batch_statistics_and_touches_no_buffer():
    """loss_star's forward: the output of BN momentum 0, bit for bit, with no buffer changed."""
    torch.manual_seed(0)
    a, b = TinyCNN(), TinyCNN()
    b.load_state_dict(a.state_dict())
    a.train(), b.train()
    b.bn.momentum = 0.0
    x = torch.randn(16, 3, 8, 8)
    before = {k: v.clone() for k, v in a.state_dict().items()}
    with torch.no_grad(), batch_stats_only(a):
        out = a(x)
    assert torch.equal(out, b(x).detach())
    assert all(torch.equal(v, before[k]) for k, v in a.state_dict().items())
    assert a.bn.track_running_stats  # restored


def test_measure_restores_the_callers_determinism_settings(tmp_path):
    torch.use_deterministic_algorithms(False)
    run(tmp_path)
    assert not torch.are_deterministic_algorithms_enabled()


class Linear(Interruptible):
    calls, interrupt_at = 0, None

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(192, 3)

    def body(self, x):
        return self.fc(x.flatten(1))


def test_diverged_run_is_reported_and_truncated(tmp_path):
    """Squared loss on a linear model with a huge step: the iterates grow geometrically to inf."""
    def model_fn():
        return Linear()

    def mse(out, y):
        return F.mse_loss(out, F.one_hot(y, 3).float())

    res = measure(model_fn, lambda p: make_optimizer("sgd", p, 50.0), tiny_data(), lr=50.0, epochs=40,
                  batch_size=16, workdir=tmp_path / "d", loss_fn=outputs(mse), progress=False)
    assert res.status == "diverged"
    assert res.diverged["reason"] in ("loss is not finite", "parameters are not finite")
    assert res.diverged["epoch"] >= 2  # a few good epochs come first
    tr = res.trace
    assert tr.meta["epochs_measured"] == res.diverged["epoch"] - 1 == tr.epoch.max() + 1
    assert np.isfinite(tr.dist_sq).all()
    # the same call again reports the same, from disk
    again = measure(model_fn, lambda p: make_optimizer("sgd", p, 50.0), tiny_data(), lr=50.0, epochs=40,
                    batch_size=16, workdir=tmp_path / "d", loss_fn=outputs(mse), progress=False)
    assert again.status == "diverged" and again.diverged == res.diverged


def test_resuming_with_other_settings_is_refused(tmp_path):
    TinyCNN.calls, TinyCNN.interrupt_at = 0, 2
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "r", epochs=2)
    TinyCNN.interrupt_at = None
    with pytest.raises(RunMismatch, match="epochs: 2 there vs 3 now"):
        run(tmp_path / "r", epochs=3)
    full = run(tmp_path / "f", epochs=2)
    with pytest.raises(RunMismatch, match="lr: 0.1 there vs 0.2 now"):
        run(tmp_path / "f", epochs=2, lr=0.2)
    assert run(tmp_path / "f", epochs=2).trace.inner.tolist() == full.trace.inner.tolist()


@pytest.mark.parametrize("at", [2, 7])  # in pass 1 (a checkpoint of epoch 0), at the start of pass 2
def test_resuming_with_another_thread_count_names_the_option(tmp_path, at):
    """Same machine, other --threads: the advice is the option to pass, not another machine."""
    from deep.measure import EnvironmentMismatch

    before = torch.get_num_threads()
    TinyCNN.calls, TinyCNN.interrupt_at = 0, at
    try:
        torch.set_num_threads(1)
        with pytest.raises(KeyboardInterrupt):
            run(tmp_path / "r", checkpoint_every=1)
        TinyCNN.interrupt_at = None
        torch.set_num_threads(2)
        with pytest.raises(EnvironmentMismatch) as exc:
            run(tmp_path / "r", checkpoint_every=1)
        msg = str(exc.value)
        assert "num_threads: 1 then vs 2 now" in msg and "pass --threads 1" in msg, msg
        assert "machine" not in msg and "elsewhere" not in msg, msg
        torch.set_num_threads(1)
        assert run(tmp_path / "r", checkpoint_every=1).trace is not None  # with the advice taken, it resumes
    finally:
        TinyCNN.interrupt_at = None
        torch.set_num_threads(before)


def test_differ_advice_for_another_device_names_the_hardware():
    from deep.env import differ_advice

    msg = differ_advice(["device_name", "num_threads"], {"device_name": "A", "num_threads": 1},
                        {"device_name": "B", "num_threads": 2})
    assert "device_name: A then vs B now" in msg and "pass --threads 1" in msg and "same device_name" in msg


@pytest.mark.slow
@pytest.mark.parametrize("network", ["resnet18", "vgg16", "alexnet"])
def test_full_width_network_replays_bitwise(tmp_path, network):
    """Run on purpose (`pytest -m slow`): a full-width paper network replays bit for bit on the CPU."""
    from deep.models import build_model

    g = torch.Generator().manual_seed(0)
    data = DeviceData(torch.randint(0, 256, (200, 3, 32, 32), dtype=torch.uint8, generator=g),
                      torch.randint(0, 10, (200,), generator=g))
    res = measure(lambda: build_model(network, 10), lambda p: make_optimizer("momentum", p, 0.01), data,
                  lr=0.01, epochs=2, batch_size=128, workdir=tmp_path, checkpoint_every=1, progress=False)
    assert res.status == "ok" and len(res.trace) == 4
    assert res.trace.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert check_trace(res.trace).identity.holds


def test_divergence_right_after_a_resume_keeps_the_measured_epochs(tmp_path):
    def mse(out, y):
        return F.mse_loss(out, F.one_hot(y, 3).float())

    def go(d):
        return measure(Linear, lambda p: make_optimizer("sgd", p, 50.0), tiny_data(), lr=50.0, epochs=40,
                       batch_size=16, workdir=d, loss_fn=outputs(mse), checkpoint_every=1, progress=False)

    full = go(tmp_path / "full")
    e = full.diverged["epoch"]
    Linear.calls, Linear.interrupt_at = 0, e * 3 + 1  # 3 steps per epoch: stop as epoch e starts
    with pytest.raises(KeyboardInterrupt):
        go(tmp_path / "cut")
    Linear.interrupt_at = None
    cut = go(tmp_path / "cut")
    assert cut.status == "diverged" and cut.diverged == full.diverged
    for col in ("loss", "loss_star", "inner", "update_sq", "dist_sq"):
        np.testing.assert_array_equal(getattr(cut.trace, col), getattr(full.trace, col))
