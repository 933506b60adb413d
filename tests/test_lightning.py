"""The Lightning callback (deep/lightning.py): two runs of one script inside a user's own Trainer
give the trace measure() gives on the same model, data, batches, loss, optimizer and schedule,
bit for bit; a second run that is not the first is stopped at its first epoch."""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

L = pytest.importorskip("lightning")

from deep.context import Extras  # noqa: E402
from deep.errors import ReplayMismatch  # noqa: E402
from deep.lightning import CyclicBatchSampler, MeasurePath, cyclic_loader  # noqa: E402
from deep.data import CyclicSampler  # noqa: E402
from deep.losses import outputs  # noqa: E402
from deep.measure import measure  # noqa: E402
from deep.tensordata import TensorData  # noqa: E402
from gamma_theory import load_trace, recording_identity  # noqa: E402

V, T, C = 11, 3, 11
LR, WD, CLIP, EPOCHS, BATCH, SEED, DATA_SEED = 3e-3, 0.1, 0.5, 3, 16, 1, 2
N = 56  # not a multiple of the batch: the last batch of an epoch is smaller


@pytest.fixture(autouse=True)
def quiet_and_restored():
    before = torch.are_deterministic_algorithms_enabled()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield
    torch.use_deterministic_algorithms(before)


def tokens(n=N, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, V, (n, T), generator=g)
    return x, (x.sum(1) % C)


class TokenNet(torch.nn.Module):
    def __init__(self, hidden=16, dropout=0.1):
        super().__init__()
        self.emb = torch.nn.Embedding(V, 8)
        self.drop = torch.nn.Dropout(dropout)
        self.fc = torch.nn.Linear(8 * T, hidden)
        self.out = torch.nn.Linear(hidden, C)

    def forward(self, x):
        h = self.drop(self.emb(x).flatten(1))
        return self.out(self.drop(torch.relu(self.fc(h))))


def warmup_cosine(warm, total):
    def f(k):
        if k < warm:
            return (k + 1) / warm
        return 0.5 * (1 + math.cos(math.pi * min(k - warm, total) / total)) + 0.05
    return f


def adamw(params):
    return torch.optim.AdamW(params, lr=LR, weight_decay=WD)


STEPS = EPOCHS * math.ceil(N / BATCH)


def schedule(opt):
    return torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(3, STEPS))


def small_transformer():
    """The transformer suite's model (deep/models/transformer.py): pre-LN, dropout 0.1, 2 heads."""
    from deep.models.transformer import build_transformer

    return build_transformer(vocab_size=V, num_classes=C, seq_len=T, norm="pre", dropout=0.1, d_model=16, n_heads=2,
                             seed=0)


class Lit(L.LightningModule):
    net_fn = TokenNet

    def __init__(self):
        super().__init__()
        self.net = type(self).net_fn()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        opt = adamw(self.parameters())
        return {"optimizer": opt, "lr_scheduler": {"scheduler": schedule(opt), "interval": "step"}}


class LitTransformer(Lit):
    net_fn = staticmethod(small_transformer)


def fit(run_dir, seed=SEED, reseed_after_model=None, precision="32-true", loader=None, module_cls=Lit, callbacks=(),
        resume=False, **trainer_kw):
    """The user's script: seed_everything, the module, a deterministic Trainer with clipping.
    ``resume``: True fits with ``ckpt_path=cb.resume_path()``, a path with that one."""
    L.seed_everything(seed, verbose=False)
    module = module_cls()
    if reseed_after_model is not None:  # same theta_0, other dropout masks: not run 1's training
        torch.manual_seed(reseed_after_model)
    cb = MeasurePath(run_dir)
    kw = dict(enable_checkpointing=False) | trainer_kw
    trainer = L.Trainer(max_epochs=EPOCHS, deterministic=True, gradient_clip_val=CLIP, gradient_clip_algorithm="norm",
                        accelerator="cpu", devices=1, callbacks=[cb, *callbacks], enable_progress_bar=False,
                        logger=False, enable_model_summary=False, precision=precision, **kw)
    ckpt = cb.resume_path() if resume is True else (str(resume) if resume else None)
    trainer.fit(module, loader() if loader else cyclic_loader(TensorData(*tokens()), BATCH, DATA_SEED), ckpt_path=ckpt)
    return cb


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    """Run 1 and run 2 of the script, and measure() on the same training."""
    d = tmp_path_factory.mktemp("lt")
    first = fit(d / "run")
    assert first.mode == "record" and first.trace is None and (d / "run/theta_star.pt").exists()
    second = fit(d / "run")
    return d, second, measured(d / "m")


def measured(workdir, model_fn=TokenNet, **kw):
    return measure(model_fn, adamw, TensorData(*tokens()), lr=LR, epochs=EPOCHS, batch_size=BATCH, workdir=workdir,
                   seed=SEED, data_seed=DATA_SEED, loss_fn=outputs(F.cross_entropy), scheduler_fn=schedule,
                   grad_clip=CLIP, progress=False,
                   extras=Extras(random_baseline=False, sensitivity=(), star_extend=0.0, record_grad=True), **kw)


COLUMNS = ("loss", "loss_star", "inner", "update_sq", "dist_sq", "grad_inner", "grad_sq", "eta", "step", "epoch")


def test_the_batch_sampler_yields_cyclic_samplers_batches():
    bs, cs = CyclicBatchSampler(N, BATCH, 5), CyclicSampler(N, BATCH, 5)
    assert len(bs) == 4
    for _ in range(3):
        assert [b for b in bs] == [i.tolist() for i in cs.next_epoch()]


def test_the_callbacks_trace_is_measures_bit_for_bit(both):
    d, second, ref = both
    assert second.mode == "replay"
    tr, mt = load_trace(d / "run/trace.npz"), ref.trace  # what `gpcheck check RUN/trace.npz` reads
    assert len(tr) == STEPS and mt.eta is not None and tr.eta is not None
    for col in COLUMNS:
        a, b = getattr(tr, col), getattr(mt, col)
        assert np.array_equal(a, b), col
    assert tr.lr == mt.lr and tr.dist0_sq == mt.dist0_sq
    assert (mt.grad_sq <= CLIP**2 * (1 + 1e-5)).all()  # g_k after clipping ...
    assert recording_identity(tr, 1e-9).holds
    assert tr.meta["lightning"] == L.__version__ and tr.meta["setup"]["gradient_clip_val"] == CLIP
    assert tr.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert "same dropout masks" in tr.meta["random_step"]["theta_star"]


def test_clipping_is_active_and_dropout_matters(both):
    """The comparison above is not vacuous: clipping cut some gradients, and dropout drew masks."""
    _, _, ref = both
    assert np.isclose(ref.trace.grad_sq, CLIP**2, rtol=1e-4).any()  # a clipped step has ||g_k|| = CLIP
    assert ref.trace.meta.get("random_step")


def test_gpcheck_check_reads_the_callbacks_trace(both):
    from click.testing import CliRunner

    from validation.cli import main

    d, _, _ = both
    res = CliRunner().invoke(main, ["check", str(d / "run/trace.npz")])
    assert res.exit_code == 0, res.output


def test_a_second_run_that_is_not_the_first_is_stopped_at_its_first_epoch(both, tmp_path):
    d, _, _ = both
    import shutil

    shutil.copytree(d / "run", tmp_path / "run")
    (tmp_path / "run/trace.npz").unlink()
    (tmp_path / "run/trace.json").unlink()
    with pytest.raises(ReplayMismatch, match=r"left run 1 in epoch 0, first at step 0 .*largest parameter deviation"):
        fit(tmp_path / "run", reseed_after_model=SEED + 1)
    assert not (tmp_path / "run/trace.npz").exists()
    with pytest.raises(ReplayMismatch, match="theta_0 differs"):
        fit(tmp_path / "run", seed=SEED + 1)


@pytest.mark.parametrize("weights_only", [False, True])
def test_a_fit_resumed_from_lightnings_own_checkpoint_is_refused(tmp_path, weights_only):
    """Only MeasurePath's own checkpoints resume a measured fit (tests/test_lightning_resume.py);
    one without callback states at all (weights_only) is refused too, by on_fit_start."""
    quiet = dict(enable_progress_bar=False, logger=False, enable_model_summary=False, enable_checkpointing=False,
                 accelerator="cpu", deterministic=True)
    L.seed_everything(0, verbose=False)
    plain = L.Trainer(max_epochs=1, **quiet)
    plain.fit(Lit(), cyclic_loader(TensorData(*tokens()), BATCH))
    plain.save_checkpoint(tmp_path / "one.ckpt", weights_only=weights_only)
    trainer = L.Trainer(max_epochs=2, callbacks=[MeasurePath(tmp_path / "r")], **quiet)
    with pytest.raises(RuntimeError, match=r"issue 17543.*ckpt_path=cb\.resume_path\(\)"):
        trainer.fit(Lit(), cyclic_loader(TensorData(*tokens()), BATCH), ckpt_path=str(tmp_path / "one.ckpt"))
    assert not (tmp_path / "r").exists()


def test_bf16_mixed_is_measures_bf16_autocast_bit_for_bit(both, tmp_path):
    fit(tmp_path / "run", precision="bf16-mixed")
    cb = fit(tmp_path / "run", precision="bf16-mixed")
    ref = measured(tmp_path / "m", autocast="bf16").trace
    assert cb.trace.meta["setup"]["precision"] == "bf16-mixed"
    assert not np.array_equal(ref.loss, both[2].trace.loss)  # autocast is on: not the float32 path
    for col in COLUMNS:
        assert np.array_equal(getattr(cb.trace, col), getattr(ref, col)), col


def test_a_dataloader_without_its_own_generator_is_not_measures_training(both, tmp_path):
    """Why cyclic_loader has a generator: a DataLoader draws its base seed from torch's global
    generator each epoch, before the first step, and every dropout mask after it moves."""
    from deep.lightning import DataBatches

    data = TensorData(*tokens())

    def loader():
        return torch.utils.data.DataLoader(DataBatches(data), batch_sampler=CyclicBatchSampler(N, BATCH, DATA_SEED),
                                           collate_fn=lambda b: b)
    fit(tmp_path / "run", loader=loader)
    cb = fit(tmp_path / "run", loader=loader)  # run 2 still reproduces run 1 ...
    assert cb.trace is not None
    ref = both[2].trace  # ... but not measure()'s path
    assert not np.array_equal(cb.trace.loss, ref.loss)
    assert np.array_equal(cb.trace.eta, ref.eta)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_a_transformer_with_dropout_adamw_cosine_clipping_is_measures_bit_for_bit(tmp_path, precision):
    """Issue 22's case: a transformer with dropout, AdamW, warm-up plus cosine, clipping (and bf16),
    through the callback and through measure(): both replays verified, every column equal."""
    first = fit(tmp_path / "run", precision=precision, module_cls=LitTransformer)
    assert first.mode == "record"
    cb = fit(tmp_path / "run", precision=precision, module_cls=LitTransformer)
    ref = measured(tmp_path / "m", model_fn=small_transformer,
                   **({"autocast": "bf16"} if precision == "bf16-mixed" else {})).trace
    assert cb.trace.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert ref.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert ref.meta.get("random_step") and ref.eta is not None
    for col in COLUMNS:
        assert np.array_equal(getattr(cb.trace, col), getattr(ref, col)), col
