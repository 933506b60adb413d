"""measure() for any training (issue 22): any data, loss(model, batch), learning-rate schedules,
randomness in the step, AdamW / clipping / accumulation / bf16, and the fingerprint that refuses
a folder holding another run. Each measured against an independent plain loop where one exists."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep.data import CyclicSampler
from deep.errors import RunMismatch
from deep.losses import outputs
from deep.measure import measure
from deep.state import load_state
from deep.tensordata import TensorData, as_data
from gamma_theory import recording_identity, trace_from_iterates
from gamma_theory.recorder import flatten_params


@pytest.fixture(autouse=True)
def restore_determinism():
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


V, T, C = 11, 3, 11  # vocabulary, sequence length, classes


def tokens(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=g)
    return x, (x.sum(1) % C)


class TokenNet(torch.nn.Module):
    """Embedding, dropout, a hidden layer: a token model with randomness in its step."""

    calls, interrupt_at = 0, None

    def __init__(self, hidden=16, dropout=0.0):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 8)
        self.drop = torch.nn.Dropout(dropout)
        self.fc = torch.nn.Linear(8 * T, hidden)
        self.out = torch.nn.Linear(hidden, C)

    def forward(self, x):
        cls = type(self)
        cls.calls += 1
        if cls.interrupt_at is not None and cls.calls >= cls.interrupt_at:
            cls.interrupt_at = None
            raise KeyboardInterrupt
        h = self.drop(self.emb(x).flatten(1))
        return self.out(self.drop(torch.relu(self.fc(h))))


def warmup_cosine(warm, total):
    def f(k):
        if k < warm:
            return (k + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(k - warm, total) / total)) + 0.05
    return lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, f)


def run(tmp, *, hidden=16, dropout=0.0, momentum=0.5, epochs=3, lr=0.2, sched=None, data=None, **kw):
    return measure(lambda: TokenNet(hidden, dropout), lambda p: torch.optim.SGD(p, lr=lr, momentum=momentum),
                   data if data is not None else TensorData(*tokens()), lr=lr, epochs=epochs, batch_size=16,
                   workdir=tmp, seed=1, data_seed=2, progress=False, scheduler_fn=sched, **kw)


def plain_loop(model_fn, opt_fn, sched_fn, x, y, epochs, batch_size, seed, data_seed, star_state, loss=F.cross_entropy):
    """The training by hand: its iterates, losses, losses at theta* with the step's own random
    state, and learning rates; the float64 brute force the recorder is held to."""
    star = model_fn()
    star.load_state_dict(star_state)
    torch.manual_seed(seed)  # the training's random state starts after the model's initialization, as in measure()
    model = model_fn()
    opt = opt_fn(model.parameters())
    sched = sched_fn(opt) if sched_fn else None
    sampler = CyclicSampler(len(x), batch_size, data_seed)
    thetas, losses, stars, etas = [flatten_params(model.parameters(), torch.float64)], [], [], []
    model.train(), star.train()
    for _ in range(epochs):
        for idx in sampler.next_epoch():
            s0 = torch.get_rng_state()
            out = loss(model(x[idx]), y[idx])
            s1 = torch.get_rng_state()
            torch.set_rng_state(s0)
            with torch.no_grad():
                stars.append(float(loss(star(x[idx]), y[idx])))
            torch.set_rng_state(s1)
            opt.zero_grad()
            out.backward()
            etas.append(opt.param_groups[0]["lr"])
            opt.step()
            if sched:
                sched.step()
            losses.append(float(out.detach()))
            thetas.append(flatten_params(model.parameters(), torch.float64))
    return torch.stack(thetas).numpy(), np.array(losses), np.array(stars), np.array(etas)


# -- the fingerprint ------------------------------------------------------------------------------
def test_a_folder_holding_another_model_or_optimizer_is_refused_in_one_line(tmp_path):
    run(tmp_path / "r", epochs=1)
    again = run(tmp_path / "r", epochs=1)  # the same run: loaded
    assert again.trace is not None
    with pytest.raises(RunMismatch) as exc:
        run(tmp_path / "r", epochs=1, hidden=32)
    msg = str(exc.value)
    assert "\n" not in msg and "fingerprint.model.structure_sha256" in msg and "theta0_sha256" in msg
    with pytest.raises(RunMismatch, match=r"fingerprint\.optimizer\.param_groups\[0\]\.momentum: 0\.5 there vs 0\.9 now"):
        run(tmp_path / "r", epochs=1, momentum=0.9)
    x, y = tokens()
    with pytest.raises(RunMismatch, match=r"fingerprint\.data\.sha256"):
        run(tmp_path / "r", epochs=1, data=TensorData(x, (y + 1) % C))
    with pytest.raises(RunMismatch, match=r"fingerprint\.schedule"):
        run(tmp_path / "r", epochs=1, sched=warmup_cosine(2, 3))


def test_a_folder_from_before_fingerprints_is_refused_unless_a_suite_spec_names_the_run(tmp_path):
    run(tmp_path / "r", epochs=1)
    setup = json.loads((tmp_path / "r/setup.json").read_text())
    del setup["fingerprint"]
    (tmp_path / "r/setup.json").write_text(json.dumps(setup))
    with pytest.raises(RunMismatch, match="no fingerprint"):
        run(tmp_path / "r", epochs=1)
    setup["run"] = {"network": "tokennet"}
    (tmp_path / "r/setup.json").write_text(json.dumps(setup))
    res = run(tmp_path / "r", epochs=1, meta={"run": {"network": "tokennet"}})
    assert res.trace is not None and "fingerprint" not in json.loads((tmp_path / "r/setup.json").read_text())


def test_the_lr_must_be_the_optimizers_without_a_schedule(tmp_path):
    with pytest.raises(ValueError, match="lr=0.3 but the optimizer's learning rate is 0.2"):
        measure(TokenNet, lambda p: torch.optim.SGD(p, lr=0.2), TensorData(*tokens()), lr=0.3, epochs=1,
                batch_size=16, workdir=tmp_path / "r", progress=False)


# -- data and loss --------------------------------------------------------------------------------
def test_token_data_and_a_map_style_dataset_give_the_same_bits(tmp_path):
    x, y = tokens()
    a = run(tmp_path / "a", data=TensorData(x, y))
    b = run(tmp_path / "b", data=[(x[i], y[i]) for i in range(len(x))])  # a list of pairs: stacked once
    assert np.array_equal(a.trace.inner, b.trace.inner) and np.array_equal(a.trace.loss_star, b.trace.loss_star)
    assert recording_identity(a.trace, 1e-9).holds
    with pytest.raises(TypeError, match="map-style dataset"):
        as_data(3)


def test_a_loss_of_model_and_batch_and_a_bare_outputs_loss(tmp_path):
    x, y = tokens()

    def smoothed(model, batch):  # a loss of one's own: label smoothing plus an L2 term
        inp, tgt = batch
        return F.cross_entropy(model(inp), tgt, label_smoothing=0.1) + 1e-3 * model.out.weight.square().sum()

    res = run(tmp_path / "a", loss_fn=smoothed)
    assert res.trace.meta["setup"]["fingerprint"]["loss"].endswith("smoothed")
    # theta_star_eval: no accuracy for a loss that is not a classification adapter
    assert "accuracy" not in res.trace.meta["theta_star_eval"]["eval"]
    ok = run(tmp_path / "b", loss_fn=outputs(lambda out, t: F.cross_entropy(out, t)))
    assert "accuracy" in ok.trace.meta["theta_star_eval"]["eval"]

    def mine(out, t):
        return F.nll_loss(F.log_softmax(out, 1), t)

    with pytest.raises(TypeError, match=r"deep\.losses\.outputs"):
        run(tmp_path / "c", loss_fn=mine)


# -- schedules ------------------------------------------------------------------------------------
def test_a_schedule_is_recorded_and_matches_float64_brute_force(tmp_path):
    sched = warmup_cosine(4, 6)
    res = run(tmp_path / "r", sched=sched, epochs=3)
    tr = res.trace
    x, y = tokens()
    star = load_state(tmp_path / "r/theta_star.pt", "cpu")
    thetas, losses, stars, etas = plain_loop(lambda: TokenNet(16), lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.5),
                                             sched, x, y, 3, 16, 1, 2, star)
    assert tr.eta is not None and np.array_equal(tr.eta, etas)  # eta_k of every step, exactly
    assert np.array_equal(tr.loss, losses) and np.array_equal(tr.loss_star, stars)
    ref = trace_from_iterates(thetas, losses, stars, 0.2, eta=etas)
    for col in ("inner", "update_sq", "dist_sq"):
        np.testing.assert_allclose(getattr(tr, col), getattr(ref, col), rtol=1e-12, atol=1e-15)
    assert recording_identity(tr, 1e-9).holds
    assert tr.meta["setup"]["fingerprint"]["schedule"]["steps"] == 9


def test_a_constant_schedule_gives_the_constant_lr_trace_bytes(tmp_path):
    a = run(tmp_path / "a")
    b = run(tmp_path / "b", sched=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0))
    assert b.trace.eta is None
    assert (tmp_path / "a/trace.npz").read_bytes() == (tmp_path / "b/trace.npz").read_bytes()
    assert a.trace.meta["setup"]["fingerprint"]["schedule"] is None


def test_a_schedule_that_reaches_zero_is_refused(tmp_path):
    with pytest.raises(ValueError, match="eta_k > 0"):
        run(tmp_path / "r", sched=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda k: k / 4))


def test_cuda_graphs_refuse_a_schedule():
    with pytest.raises(ValueError, match="constant learning rate"):
        measure(TokenNet, lambda p: torch.optim.SGD(p, lr=0.2), TensorData(*tokens()), lr=0.2, epochs=1,
                batch_size=16, workdir="/nonexistent/never-made", cuda_graphs=True, graphs_backend=object,
                scheduler_fn=warmup_cosine(2, 2), progress=False)


# -- randomness in the step -----------------------------------------------------------------------
def test_dropout_is_replayed_and_theta_star_sees_the_steps_masks(tmp_path):
    res = run(tmp_path / "r", dropout=0.2, sched=warmup_cosine(3, 6))
    tr = res.trace
    assert json.loads((tmp_path / "r/trace.json").read_text())["replay_verified"]["final"] == "bitwise equal to theta*"
    x, y = tokens()
    star = load_state(tmp_path / "r/theta_star.pt", "cpu")
    _, losses, stars, etas = plain_loop(lambda: TokenNet(16, 0.2), lambda p: torch.optim.SGD(p, lr=0.2, momentum=0.5),
                                        warmup_cosine(3, 6), x, y, 3, 16, 1, 2, star)
    assert np.array_equal(tr.loss, losses)  # the replay drew pass 1's masks
    assert np.array_equal(tr.loss_star, stars)  # theta* saw the masks of the step at theta_k
    # ... and the masks matter: without them theta*'s losses differ
    star_model = TokenNet(16, 0.2)
    star_model.load_state_dict(star)
    star_model.train()
    torch.manual_seed(123)
    other = float(F.cross_entropy(star_model(x[:16]), y[:16]))
    assert not np.isclose(other, stars[0])
    assert "same dropout masks" in tr.meta["random_step"]["theta_star"]


def test_an_interrupted_run_with_dropout_and_a_schedule_resumes_to_the_same_bits(tmp_path):
    full = run(tmp_path / "full", dropout=0.2, sched=warmup_cosine(3, 6), epochs=4, checkpoint_every=1)
    for at in (5, 14, 22):  # in pass 1, in pass 2 ...
        TokenNet.calls, TokenNet.interrupt_at = 0, at
        d = tmp_path / f"cut{at}"
        with pytest.raises(KeyboardInterrupt):
            run(d, dropout=0.2, sched=warmup_cosine(3, 6), epochs=4, checkpoint_every=1)
        TokenNet.interrupt_at = None
        again = run(d, dropout=0.2, sched=warmup_cosine(3, 6), epochs=4, checkpoint_every=1)
        assert (d / "trace.npz").read_bytes() == (tmp_path / "full/trace.npz").read_bytes(), at
        assert np.array_equal(again.trace.eta, full.trace.eta)


# -- the recipe: AdamW, clipping, accumulation, bf16 ----------------------------------------------
@pytest.mark.parametrize("recipe", [dict(grad_clip=0.5), dict(accumulate=2), dict(autocast="bf16"),
                                    dict(grad_clip=0.5, accumulate=3, autocast="bf16")])
def test_adamw_with_each_recipe_is_measured_with_a_bitwise_replay(tmp_path, recipe):
    res = measure(lambda: TokenNet(16, 0.1), lambda p: torch.optim.AdamW(p, lr=3e-3, weight_decay=0.1),
                  TensorData(*tokens()), lr=3e-3, epochs=2, batch_size=16, workdir=tmp_path / "r", seed=1,
                  progress=False, scheduler_fn=warmup_cosine(2, 4), **recipe)
    tr = res.trace
    assert tr.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert all(tr.meta["setup"][k] == v for k, v in recipe.items())
    assert recording_identity(tr, 1e-9).holds and np.isfinite(tr.loss_star).all()


def test_accumulation_gives_the_whole_batch_loss_and_clipping_bounds_the_gradient(tmp_path):
    x, y = tokens()
    mk = (lambda: TokenNet(16), lambda p: torch.optim.SGD(p, lr=0.2), TensorData(x, y))
    one = measure(*mk, lr=0.2, epochs=1, batch_size=16, workdir=tmp_path / "a", seed=1, progress=False)
    two = measure(*mk, lr=0.2, epochs=1, batch_size=16, workdir=tmp_path / "b", seed=1, progress=False, accumulate=4)
    np.testing.assert_allclose(two.trace.loss, one.trace.loss, rtol=1e-5)  # the same loss, summed in parts
    np.testing.assert_allclose(two.trace.update_sq, one.trace.update_sq, rtol=1e-4)
    clip = measure(*mk, lr=0.2, epochs=1, batch_size=16, workdir=tmp_path / "c", seed=1, progress=False,
                   grad_clip=0.05)
    assert (clip.trace.grad_sq <= 0.05**2 * (1 + 1e-5)).all()  # g_k: the clipped gradient the optimizer took
    assert (one.trace.grad_sq > 0.05**2).any()


class NumpyNoise(TokenNet):
    """Noise from numpy's global generator, which gpcheck neither saves nor replays."""

    def forward(self, x):
        return super().forward(x) + torch.from_numpy(np.random.standard_normal(C).astype(np.float32))


def test_a_step_that_cannot_be_replayed_names_the_likely_cause(tmp_path):
    from deep.errors import ReplayMismatch

    with pytest.raises(ReplayMismatch, match="numpy's or Python's random") as exc:
        measure(NumpyNoise, lambda p: torch.optim.SGD(p, lr=0.2), TensorData(*tokens()), lr=0.2, epochs=2,
                batch_size=16, workdir=tmp_path / "r", progress=False, checkpoint_every=1)
    assert "delete the folder" in str(exc.value)
