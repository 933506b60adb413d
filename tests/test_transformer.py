"""The transformer suite's groundwork (issue 23): algorithmic data and the transformer model."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from deep.algorithmic import make_task, modular_addition, modular_addition_pairs, sparse_parity
from deep.models.transformer import (ACTIVATIONS, NORMS, RESIDUALS, TRANSFORMERS, CausalSelfAttention,
                                     Transformer, build_transformer)

P = 13  # a small modulus keeps the tests fast; the defaults are checked once below
SMALL = dict(vocab_size=P + 1, num_classes=P, seq_len=3, d_model=32, n_heads=4)
VARIANTS = list(itertools.product(NORMS, RESIDUALS, ACTIVATIONS))


def small(name="transformer1", seed=0, **kw):
    return build_transformer(name, seed=seed, **{**SMALL, **kw})


# ---------------------------------------------------------------- data

def test_pairs_are_every_pair_with_its_sum():
    x, y = modular_addition_pairs(P)
    assert x.dtype == y.dtype == torch.int64 and x.shape == (P * P, 3) and y.shape == (P * P,)
    assert {(a, b) for a, b, _ in x.tolist()} == set(itertools.product(range(P), range(P)))
    assert (x[:, 2] == P).all()
    assert all(c == (a + b) % P for (a, b, _), c in zip(x.tolist(), y.tolist()))


@pytest.mark.parametrize("p,frac", [(97, 0.4), (P, 0.3), (P, 0.5)])
def test_split_covers_every_pair_exactly_once(p, frac):
    t = modular_addition(p, frac, seed=3)
    x = torch.cat([t.x_train, t.x_test])
    y = torch.cat([t.y_train, t.y_test])
    assert x.dtype == y.dtype == torch.int64 and x.shape == (p * p, 3)
    pairs = [(a, b) for a, b, _ in x.tolist()]
    assert len(pairs) == len(set(pairs)) == p * p  # every pair, none twice
    assert len(t) == round(frac * p * p) and t.y_test.numel() == p * p - len(t)
    assert ((x[:, 0] + x[:, 1]) % p == y).all()
    assert (t.x_train[:, 2] == p).all() and t.vocab_size == p + 1 and t.num_classes == p


def test_default_task_is_p97_with_40_percent():
    t = modular_addition()
    assert t.meta["p"] == 97 and len(t) == round(0.4 * 97 * 97) and t.seq_len == 3


def test_split_reproducible_from_seed_and_differs_for_another_seed():
    a, b, c = modular_addition(P, 0.4, seed=5), modular_addition(P, 0.4, seed=5), modular_addition(P, 0.4, seed=6)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_train, b.y_train)
    assert torch.equal(a.x_test, b.x_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_split_draws_nothing_from_the_global_stream():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    modular_addition(P, 0.4, seed=1, random_labels=True)
    assert torch.equal(before, torch.random.get_rng_state())
    torch.manual_seed(123)  # and the global seed does not move the split
    t = modular_addition(P, 0.4, seed=1)
    torch.manual_seed(999)
    assert torch.equal(t.x_train, modular_addition(P, 0.4, seed=1).x_train)


def test_random_labels_are_a_permutation_of_the_true_labels():
    true = modular_addition(P, 0.4, seed=2)
    rnd = modular_addition(P, 0.4, seed=2, random_labels=True)
    assert torch.equal(true.x_train, rnd.x_train) and torch.equal(true.x_test, rnd.x_test)  # same split
    y_true = torch.cat([true.y_train, true.y_test])
    y_rnd = torch.cat([rnd.y_train, rnd.y_test])
    assert torch.equal(y_true.sort().values, y_rnd.sort().values)  # the same labels ...
    assert (y_true != y_rnd).float().mean() > 0.5  # ... on other examples
    again = modular_addition(P, 0.4, seed=2, random_labels=True)
    assert torch.equal(y_rnd, torch.cat([again.y_train, again.y_test]))  # reproducible from the seed
    other = modular_addition(P, 0.4, seed=2, random_labels=True, label_seed=1)
    assert not torch.equal(y_rnd, torch.cat([other.y_train, other.y_test]))
    assert rnd.meta["random_labels"] and "RANDOM LABELS" in rnd.describe()


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, 1e-9])
def test_bad_train_fraction_refused(bad):
    with pytest.raises(ValueError):
        modular_addition(P, bad)


def test_sparse_parity():
    t = sparse_parity(n_bits=10, k=3, n_examples=300, seed=4)
    x = torch.cat([t.x_train, t.x_test])
    y = torch.cat([t.y_train, t.y_test])
    assert x.shape == (300, 10) and set(x.unique().tolist()) <= {0, 1}
    assert len({tuple(r) for r in x.tolist()}) == 300
    assert torch.equal(y, x[:, t.meta["secret"]].sum(1) % 2)
    assert len(t.meta["secret"]) == 3 and 0.3 < y.float().mean() < 0.7
    assert torch.equal(t.x_train, make_task("sparse_parity", n_bits=10, k=3, n_examples=300, seed=4).x_train)


# ---------------------------------------------------------------- model

@pytest.mark.parametrize("norm,residual,activation", VARIANTS)
def test_shapes_and_every_variant_runs(norm, residual, activation):
    m = small(norm=norm, residual=residual, activation=activation)
    x = modular_addition(P, 0.5).x_train[:7]
    out = m(x)
    assert out.shape == (7, P) and out.dtype == torch.float32 and torch.isfinite(out).all()
    F.cross_entropy(out, torch.zeros(7, dtype=torch.int64)).backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
    d = m.describe()
    assert d["family"] == "transformer" and d["norm"] == norm and d["residual"] == residual
    assert d["num_layernorm"] == {"none": 0, "post": 2, "pre": 3}[norm]
    assert d["num_active_residuals"] == (2 if residual == "all" else 0)
    assert d["num_params"] == sum(p.numel() for p in m.parameters())


def test_default_size_and_registry():
    assert set(TRANSFORMERS) == {"transformer1", "transformer2"}
    m = build_transformer()
    d = m.describe()
    assert (d["n_layers"], d["d_model"], d["n_heads"], d["d_mlp"], d["num_classes"]) == (1, 128, 4, 512, 97)
    assert build_transformer("transformer2").describe()["n_layers"] == 2
    with pytest.raises(ValueError):
        build_transformer("transformer3")
    for bad in (dict(norm="batch"), dict(residual="first"), dict(activation="tanh"), dict(dropout=1.0)):
        with pytest.raises(ValueError):
            small(**bad)
    with pytest.raises(ValueError):
        small(d_model=30)  # not a multiple of 4 heads


@pytest.mark.parametrize("name", ["transformer1", "transformer2"])
def test_variants_share_weights_by_layer_name(name):
    base = dict(small(name, seed=7).named_parameters())
    for norm, residual, activation in VARIANTS:
        other = dict(small(name, seed=7, norm=norm, residual=residual, activation=activation).named_parameters())
        shared = set(base) & set(other)
        assert {k for k in other if "ln" not in k} == set(base)  # only the LayerNorms come and go
        for k in shared:
            assert torch.equal(base[k], other[k]), k
    pre = dict(small(name, seed=7, norm="pre").named_parameters())
    post = dict(small(name, seed=7, norm="post").named_parameters())
    assert all(torch.equal(post[k], pre[k]) for k in post)
    diff = dict(small(name, seed=8).named_parameters())
    assert not torch.equal(base["blocks.0.attn.q.weight"], diff["blocks.0.attn.q.weight"])
    # a layer's draw does not depend on its position in the build: the 2-layer model's first block is
    # the 1-layer model's block
    if name == "transformer2":
        one = dict(small("transformer1", seed=7).named_parameters())
        assert all(torch.equal(one[k], base[k]) for k in one)


def test_build_is_deterministic_and_leaves_the_global_stream_alone():
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    a, b = small(seed=3, norm="pre"), small(seed=3, norm="pre")
    assert torch.equal(before, torch.random.get_rng_state())
    for (ka, pa), (kb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert ka == kb and torch.equal(pa, pb)


@pytest.mark.parametrize("norm,dropout", [("none", 0.0), ("pre", 0.0), ("post", 0.1)])
def test_an_sgd_step_twice_is_bitwise_equal(norm, dropout):
    t = modular_addition(P, 0.5, seed=0)

    def one_run():
        torch.manual_seed(11)  # dropout's masks come from the global stream
        m = small("transformer2", seed=1, norm=norm, dropout=dropout)
        opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.5)
        for _ in range(2):
            opt.zero_grad()
            F.cross_entropy(m(t.x_train), t.y_train).backward()
            opt.step()
        return torch.cat([p.detach().flatten() for p in m.parameters()])

    first, second = one_run(), one_run()
    assert torch.equal(first, second)
    assert not torch.equal(first, torch.cat([p.flatten() for p in small("transformer2", seed=1, norm=norm,
                                                                          dropout=dropout).parameters()]))


def test_no_dropout_module_at_zero_and_eval_mode_drops_nothing():
    assert not any(isinstance(mod, torch.nn.Dropout) for mod in small().modules())
    m = small(dropout=0.5)
    assert sum(isinstance(mod, torch.nn.Dropout) for mod in m.modules()) == 4  # embeddings, probs, 2 sublayers
    x = modular_addition(P, 0.5).x_train[:5]
    m.eval()
    assert torch.equal(m(x), m(x))
    m.train()
    assert not torch.equal(m(x), m(x))


def _attention(seed=0, t=5, d=32):
    torch.manual_seed(seed)
    attn = CausalSelfAttention(d, 4, max_len=8)
    h = torch.randn(3, t, d)
    return attn, h


def _later_change_leaks(attn, h, j):
    """Whether changing position j of ``h`` changes the attention output at a position before j."""
    h2 = h.clone()
    h2[:, j] = torch.randn(h.shape[0], h.shape[2])
    a, b = attn(h), attn(h2)
    return not torch.equal(a[:, :j], b[:, :j]), not torch.equal(a[:, j:], b[:, j:])


@pytest.mark.parametrize("j", [1, 2, 4])
def test_attention_is_causal(j):
    attn, h = _attention()
    leaks, changes_later = _later_change_leaks(attn, h, j)
    assert not leaks  # earlier positions' outputs are bitwise unchanged
    assert changes_later  # but position j itself (and after) does see it


def test_causal_check_would_catch_a_missing_mask():
    attn, h = _attention()
    attn.future.zero_()  # no mask: every position sees the future
    assert _later_change_leaks(attn, h, 2)[0]


@pytest.mark.parametrize("name", ["transformer1", "transformer2"])
@pytest.mark.parametrize("norm,residual", list(itertools.product(NORMS, RESIDUALS)))
def test_last_position_shortcut_equals_the_full_computation(name, norm, residual):
    m = small(name, seed=2, norm=norm, residual=residual, activation="gelu")
    x = modular_addition(P, 0.5).x_train[:9]
    h = m.embed(x)
    for block in m.blocks:  # every position through every block, then read the last
        h = block(h, last_only=False)
    h = h[:, -1]
    if norm == "pre":
        h = m.ln_f(h)
    torch.testing.assert_close(m(x), m.unembed(h), rtol=1e-5, atol=1e-6)


def test_prediction_reads_only_the_last_position_and_sees_all_tokens():
    m = small(seed=4)
    x = modular_addition(P, 0.5).x_train[:4].clone()
    base = m(x)
    for j in range(3):
        x2 = x.clone()
        x2[:, j] = (x2[:, j] + 1) % P
        assert not torch.allclose(m(x2), base)


def test_bad_inputs_refused():
    m = small()
    with pytest.raises(TypeError):
        m(torch.zeros(2, 3))  # float tokens
    with pytest.raises(ValueError):
        m(torch.zeros(2, 4, dtype=torch.int64))  # longer than seq_len
    with pytest.raises(ValueError):
        m(torch.zeros(3, dtype=torch.int64))


def test_a_transformer_fits_a_few_pairs():
    """The model and the data fit together: AdamW memorizes 40 pairs mod 13 in 150 full-batch steps."""
    t = modular_addition(P, 0.25, seed=0)
    x, y = t.x_train[:40], t.y_train[:40]
    m = small(seed=0, norm="pre")
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(150):
        opt.zero_grad()
        loss = F.cross_entropy(m(x), y)
        loss.backward()
        opt.step()
    assert (m(x).argmax(1) == y).all() and loss.item() < 0.05


def test_transformer_class_is_the_built_model():
    assert isinstance(small(), Transformer)


# ---------------------------------------------------------------- measured exactly

def test_split_data_is_tensordata_of_each_split():
    from deep.algorithmic import split_data
    from deep.tensordata import TensorData

    t = modular_addition(P, 0.4, seed=1)
    train, held = t.as_data()
    assert isinstance(train, TensorData) and isinstance(held, TensorData)
    assert len(train) == len(t) and len(held) == t.y_test.numel()
    x, y = train.batch(torch.tensor([2, 0]))
    assert torch.equal(x, t.x_train[[2, 0]]) and torch.equal(y, t.y_train[[2, 0]])
    xs, ys = zip(*held.eval_batches(50))
    assert torch.equal(torch.cat(xs), t.x_test) and torch.equal(torch.cat(ys), t.y_test)
    a, b = split_data(t)
    assert torch.equal(a.tensors[0], train.tensors[0]) and torch.equal(b.tensors[1], held.tensors[1])


@pytest.mark.parametrize("norm,dropout", [("pre", 0.0), ("post", 0.1)])
def test_measured_exactly_with_adamw_warmup_and_a_bitwise_replay(tmp_path, norm, dropout):
    """The suite's run through the open engine: the training split as TensorData, the loss
    outputs(F.cross_entropy), AdamW with weight decay and a per-step warm-up; pass 2 replays
    pass 1 bit for bit (with dropout too), and the trace matches a plain loop's losses."""
    import json

    from deep.losses import outputs
    from deep.measure import measure

    t = modular_addition(23, 0.4, seed=0)
    train, held = t.as_data()
    kw = dict(vocab_size=24, num_classes=23, seq_len=3, d_model=32, n_heads=4, norm=norm, dropout=dropout)

    def opt_fn(p):
        return torch.optim.AdamW(p, lr=1e-3, betas=(0.9, 0.98), weight_decay=1.0)

    def warmup(opt):
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))

    res = measure(lambda: build_transformer(seed=0, **kw), opt_fn, train, lr=1e-3, epochs=25, batch_size=64,
                  workdir=tmp_path / "r", seed=0, data_seed=0, loss_fn=outputs(F.cross_entropy),
                  scheduler_fn=warmup, progress=False)
    tr = res.trace
    side = json.loads((tmp_path / "r/trace.json").read_text())
    assert res.status == "ok" and len(tr) == 25 * 4  # 212 training pairs, 4 steps of 64 per epoch
    assert side["replay_verified"]["final"] == "bitwise equal to theta*"
    assert tr.eta[0] == pytest.approx(1e-4) and tr.eta[-1] == 1e-3
    assert np.isfinite(tr.loss_star).all() and tr.loss[-1] < tr.loss[0]
    assert side["theta_star_eval"]["eval"]["accuracy"] is not None
    assert (dropout > 0) == ("random_step" in tr.meta)
    if dropout == 0:  # a plain loop with the same sampler and init gives the same losses, bit for bit
        from deep.data import CyclicSampler

        torch.manual_seed(0)
        m = build_transformer(seed=0, **kw)
        opt = opt_fn(m.parameters())
        sched = warmup(opt)
        sampler, losses = CyclicSampler(len(train), 64, 0), []
        for _ in range(25):
            for idx in sampler.next_epoch():
                loss = F.cross_entropy(m(t.x_train[idx]), t.y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                losses.append(float(loss.detach()))
        assert np.array_equal(tr.loss, np.array(losses))
