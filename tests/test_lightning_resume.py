"""Resuming a measured Lightning fit from MeasurePath's own checkpoints (deep/lightning.py): an
interrupted run 1 or run 2, resumed with ``ckpt_path=cb.resume_path()``, leaves the files and the
trace an uninterrupted one leaves, bit for bit; a checkpoint that is not the callback's, was
changed, or is of another setup is refused in one line.

The model is test_lightning's: dropout, AdamW, warm-up plus cosine stepped every step, norm
clipping. Checked by hand that these tests fail without each restored piece: with
``deep.lightning._set_rng_states`` a no-op (the dropout masks after the resume are other ones) or
``CyclicSampler.load_state_dict`` a no-op (epoch 1 gets epoch 0's batches), the resumed run 1's
digests differ from epoch 1 on and the resumed run 2 stops with ReplayMismatch; with the random
states put back in ``on_train_start`` instead of ``on_load_checkpoint``, the ``cyclic_loader`` cases
pass but the "no generator" ones fail (that DataLoader draws its base seed from torch's generator
when Lightning makes the epoch's iterator, before ``on_train_start``)."""

import json
import shutil

import numpy as np
import pytest
import torch

L = pytest.importorskip("lightning")

from deep.errors import RunMismatch  # noqa: E402
from deep.lightning import CyclicBatchSampler, DataBatches, MeasurePath, _as_is  # noqa: E402
from deep.tensordata import TensorData  # noqa: E402
from gamma_theory import load_trace, recording_identity  # noqa: E402
from test_lightning import BATCH, COLUMNS, DATA_SEED, EPOCHS, LR, N, STEPS, fit, tokens  # noqa: E402
from test_lightning import quiet_and_restored  # noqa: E402,F401 (the autouse fixture)

PER_EPOCH = STEPS // EPOCHS  # 4 steps an epoch


class Crash(Exception):
    pass


class CrashAt(L.Callback):
    """The process dies before global step ``step`` (after the callback's checkpoint of the epochs before)."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if trainer.global_step == self.step:
            raise Crash(self.step)


class Probe(L.Callback):
    """Where the fit starts, and every step it takes."""

    def on_train_start(self, trainer, module):
        self.start, self.steps = (trainer.current_epoch, trainer.global_step), []

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        self.steps.append(trainer.global_step)


def no_generator_loader():
    """cyclic_loader's batches from a DataLoader without a generator of its own: each epoch's
    iterator draws its base seed from torch's generator, so the random state must be back before
    Lightning makes the first resumed epoch's iterator."""
    return torch.utils.data.DataLoader(DataBatches(TensorData(*tokens())),
                                       batch_sampler=CyclicBatchSampler(N, BATCH, DATA_SEED), collate_fn=_as_is)


LOADERS = {"cyclic_loader": None, "no generator": no_generator_loader}


@pytest.fixture(scope="module", params=list(LOADERS))
def reference(request, tmp_path_factory):
    """An uninterrupted run 1 (its folder kept as run 1 left it) and an uninterrupted run 2's trace."""
    loader = LOADERS[request.param]
    d = tmp_path_factory.mktemp("ref")
    assert fit(d / "run1", loader=loader).mode == "record"
    shutil.copytree(d / "run1", d / "run2")
    trace = fit(d / "run2", loader=loader).trace
    return d / "run1", trace, loader


def crash(folder, step, **kw):
    with pytest.raises(Crash):
        fit(folder, callbacks=[CrashAt(step)], **kw)


def test_an_interrupted_run_1_resumed_writes_what_an_uninterrupted_one_writes(reference, tmp_path):
    ref, _, loader = reference
    run = tmp_path / "run"
    crash(run, PER_EPOCH + 2, loader=loader)  # in epoch 1: the checkpoint is epoch 0's
    assert (run / "checkpoints/run1-last.ckpt").exists() and not (run / "run1.json").exists()
    assert MeasurePath(run).resume_path() == str(run / "checkpoints/run1-last.ckpt")
    with pytest.raises(RuntimeError, match=r"unfinished run 1 .*resume it with trainer\.fit\(\.\.\., "
                                           r"ckpt_path=cb\.resume_path\(\)\) .* or delete the folder"):
        fit(run, loader=loader)
    probe = Probe()
    cb = fit(run, callbacks=[probe], resume=True, loader=loader)
    assert probe.start == (1, PER_EPOCH)  # the next epoch, no step replayed or skipped
    assert probe.steps == list(range(PER_EPOCH, STEPS)) and cb.step == STEPS
    a, b = json.loads((ref / "run1.json").read_text()), json.loads((run / "run1.json").read_text())
    for key in ("setup", "theta0_sha256", "epochs", "steps"):
        assert a[key] == b[key], key
    assert b["resumed_after_epochs"] == [0] and "resumed_after_epochs" not in a
    files = sorted(p.relative_to(ref).as_posix() for p in ref.rglob("*.pt"))
    assert "theta_star.pt" in files and "epochs/epoch0003.pt" in files
    assert files == sorted(p.relative_to(run).as_posix() for p in run.rglob("*.pt"))
    for f in files:
        assert (ref / f).read_bytes() == (run / f).read_bytes(), f
    assert not (run / "checkpoints/run1-last.ckpt").exists()  # run 1 is finished: nothing to resume
    assert MeasurePath(run).resume_path() is None


def test_an_interrupted_run_2_resumed_twice_records_the_uninterrupted_trace(reference, tmp_path):
    ref, want, loader = reference
    run = tmp_path / "run"
    shutil.copytree(ref, run)
    crash(run, 2, loader=loader)  # in epoch 0: no checkpoint yet, the next fit starts run 2 afresh
    assert MeasurePath(run).resume_path() is None
    crash(run, PER_EPOCH + 1, loader=loader, resume=True)
    assert MeasurePath(run).resume_path() == str(run / "checkpoints/run2-last.ckpt")
    crash(run, 2 * PER_EPOCH + 2, loader=loader, resume=True)  # resumed after epoch 0, dies in epoch 2
    probe = Probe()
    cb = fit(run, callbacks=[probe], resume=True, loader=loader)
    assert probe.start == (2, 2 * PER_EPOCH) and probe.steps == list(range(2 * PER_EPOCH, STEPS))
    got = load_trace(run / "trace.npz")
    assert len(got) == STEPS and got.meta["resumed_after_epochs"] == [0, 1]
    assert got.eta is not None and got.grad_sq is not None and want.meta.get("random_step")
    for col in COLUMNS:
        assert np.array_equal(getattr(got, col), getattr(want, col)), col
        assert np.array_equal(getattr(cb.trace, col), getattr(want, col)), col
    assert got.lr == want.lr and got.dist0_sq == want.dist0_sq
    assert got.meta["random_step"] == want.meta["random_step"]
    assert got.meta["replay_verified"]["final"] == "bitwise equal to theta*"
    assert recording_identity(got, 1e-9).holds
    assert not (run / "checkpoints/run2-last.ckpt").exists()


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory):
    """A run 1 that died in epoch 1: its folder holds the callback's checkpoint after epoch 0."""
    run = tmp_path_factory.mktemp("interrupted") / "run"
    crash(run, PER_EPOCH + 2)
    return run


@pytest.fixture
def run(interrupted, tmp_path):
    shutil.copytree(interrupted, tmp_path / "run")
    return tmp_path / "run"


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_a_changed_checkpoint_is_refused_by_its_digest(run):
    path = run / "checkpoints/run1-last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["net.fc.weight"][0, 0] += 1e-3  # one parameter
    torch.save(ckpt, path)
    with pytest.raises(RuntimeError, match=r"sha256 .* the checkpoint recorded .* after epoch 0: the digest does not "
                                           r"match") as exc:
        fit(run, resume=True)
    one_line(exc)
    assert not (run / "run1.json").exists()


def test_lightnings_own_checkpoint_of_the_same_fit_is_refused(tmp_path):
    """A ModelCheckpoint's file written beside MeasurePath carries no state of the callback."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    run = tmp_path / "run"
    mc = ModelCheckpoint(dirpath=tmp_path / "lightning", save_last=True)
    with pytest.raises(Crash):
        fit(run, callbacks=[CrashAt(PER_EPOCH + 2), mc], enable_checkpointing=True)
    last = tmp_path / "lightning/last.ckpt"
    assert last.exists() and "MeasurePath" not in torch.load(last, weights_only=True).get("callbacks", {})
    with pytest.raises(RuntimeError, match=r"is not a checkpoint of MeasurePath .*issue 17543.*"
                                           r"ckpt_path=cb\.resume_path\(\)") as exc:
        fit(run, resume=last)
    one_line(exc)


def test_a_checkpoint_of_another_setup_is_refused_naming_the_difference(run, monkeypatch):
    import test_lightning

    monkeypatch.setattr(test_lightning, "LR", 2 * LR)  # the same script with another learning rate
    with pytest.raises(RunMismatch, match=r"a checkpoint of another training: optimizer\.param_groups\[0\]\.initial_lr: "
                                          rf"{LR} there vs {2 * LR} now; optimizer\.param_groups\[0\]\.lr: ") as exc:
        fit(run, resume=True)
    one_line(exc)


def test_a_resume_needs_a_cyclic_batch_sampler_and_the_next_epoch(run):
    def plain():
        return torch.utils.data.DataLoader(DataBatches(TensorData(*tokens())), batch_size=BATCH, collate_fn=_as_is)

    with pytest.raises(RuntimeError, match="batch sampler to be a deep.lightning.CyclicBatchSampler") as exc:
        fit(run, resume=True, loader=plain)
    one_line(exc)
    with pytest.raises(RuntimeError, match=r"max_steps=12\) does not resume at the next epoch") as exc:
        fit(run, resume=True, max_steps=STEPS)  # Lightning would restart inside epoch 0
    one_line(exc)


def test_run_1s_checkpoint_is_refused_once_run_1_is_finished(run, tmp_path):
    stale = tmp_path / "stale.ckpt"
    shutil.copy(run / "checkpoints/run1-last.ckpt", stale)
    fit(run, resume=True)
    with pytest.raises(RuntimeError, match=r"a checkpoint of run 1 but run 1 is finished") as exc:
        fit(run, resume=stale)
    one_line(exc)
