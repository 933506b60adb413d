"""Tests for deep.data: loaders (JPEG archive, torchvision pickle format), subsets,
on-device normalization and the cyclic sampler. No network access."""

from __future__ import annotations

import io
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from PIL import Image

from deep import data
from deep.data import (
    CyclicSampler,
    DataError,
    DeviceData,
    Split,
    balanced_subset,
    channel_stats,
    load_split,
)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]
ARCHIVE = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------- shared JPEG archive


@pytest.fixture(scope="module")
def jpeg(tmp_path_factory):
    """Decode the shared archive once into a fresh cache dir (both splits in one pass)."""
    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG archive not present at {ARCHIVE}")
    cache = tmp_path_factory.mktemp("gpcheck-cache")
    t0 = time.perf_counter()
    train = load_split("cifar10-jpeg", "train", root=ARCHIVE, cache_dir=cache)
    decode_s = time.perf_counter() - t0
    test = load_split("cifar10-jpeg", "test", root=ARCHIVE, cache_dir=cache)
    print(f"\ncifar10-jpeg: decoding the full archive took {decode_s:.2f} s")
    return {"train": train, "test": test, "cache": cache, "decode_s": decode_s}


@pytest.mark.parametrize("split,per_class", [("train", 5000), ("test", 1000)])
def test_jpeg_split_contents(jpeg, split, per_class):
    s = jpeg[split]
    assert isinstance(s, Split)
    assert s.classes == CIFAR10_CLASSES
    assert s.images.dtype == torch.uint8 and s.images.is_contiguous()
    assert tuple(s.images.shape) == (10 * per_class, 3, 32, 32)
    assert s.labels.dtype == torch.int64 and tuple(s.labels.shape) == (10 * per_class,)
    assert s.labels.bincount(minlength=10).tolist() == [per_class] * 10
    # sorted by class, then file name
    assert torch.equal(s.labels, torch.arange(10).repeat_interleave(per_class))
    assert "cifar10-jpeg archive" in s.source and "sha256 011112e92318" in s.source


def test_jpeg_pixels_match_pil(jpeg):
    wanted = {"train/cat/0123.jpg": ("train", 3 * 5000 + 123),
              "train/airplane/0000.jpg": ("train", 0),
              "test/truck/0999.jpg": ("test", 9999)}
    with tarfile.open(ARCHIVE, "r:gz") as tf:
        for name, (split, index) in wanted.items():
            ref = np.asarray(Image.open(io.BytesIO(tf.extractfile(name).read())).convert("RGB"))
            got = jpeg[split].images[index].permute(1, 2, 0).numpy()
            np.testing.assert_array_equal(got, ref, err_msg=name)


def test_jpeg_second_call_hits_cache(jpeg, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("archive decoded again although the cache exists")

    monkeypatch.setattr(data, "_decode_archive", boom)
    t0 = time.perf_counter()
    again = load_split("cifar10-jpeg", "train", root=ARCHIVE, cache_dir=jpeg["cache"])
    elapsed = time.perf_counter() - t0
    assert torch.equal(again.images, jpeg["train"].images)
    assert torch.equal(again.labels, jpeg["train"].labels)
    assert again.source == jpeg["train"].source
    assert elapsed < 2.0, f"cache load took {elapsed:.2f} s"  # ~0.35 s on an idle 2-core box
    assert not list(Path(jpeg["cache"]).glob("*.tmp"))


def test_jpeg_device_data_stats(jpeg):
    sub = balanced_subset(jpeg["train"].labels, 2000, seed=0)
    mean, std = channel_stats(jpeg["train"].images[sub])
    # well-known CIFAR-10 statistics (the JPEG copy is close to the original)
    torch.testing.assert_close(mean, torch.tensor([0.491, 0.482, 0.447]), atol=0.02, rtol=0)
    torch.testing.assert_close(std, torch.tensor([0.247, 0.243, 0.262]), atol=0.02, rtol=0)


def test_jpeg_truncated_archive(tmp_path):
    if not ARCHIVE.is_file():
        pytest.skip(f"shared CIFAR-10 JPEG archive not present at {ARCHIVE}")
    bad = tmp_path / "cifar10-jpeg.tar.gz"
    with open(ARCHIVE, "rb") as f:
        bad.write_bytes(f.read(1_000_000))
    with pytest.raises(DataError, match="corrupt or truncated"):
        load_split("cifar10-jpeg", "train", root=bad, cache_dir=tmp_path / "cache")
    cache = tmp_path / "cache"
    assert not cache.exists() or not any(cache.iterdir())


# --------------------------------------------------------------------------- synthetic JPEG archive


def _make_archive(path: Path, classes=("b_cls", "a_cls"), n_train=3, n_test=2, seed=0):
    rng = np.random.default_rng(seed)
    files = {}
    with tarfile.open(path, "w:gz") as tf:
        for split, n in (("train", n_train), ("test", n_test)):
            for c in classes:
                for i in reversed(range(n)):  # out of order on purpose
                    arr = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
                    buf = io.BytesIO()
                    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
                    raw = buf.getvalue()
                    name = f"{split}/{c}/{i:04d}.jpg"
                    files[name] = raw
                    info = tarfile.TarInfo(name)
                    info.size = len(raw)
                    tf.addfile(info, io.BytesIO(raw))
    return files


def test_small_archive_order_labels_and_pixels(tmp_path):
    arch = tmp_path / "small.tar.gz"
    files = _make_archive(arch)
    s = load_split("cifar10-jpeg", "train", root=arch, cache_dir=tmp_path / "c")
    assert s.classes == ["a_cls", "b_cls"]
    assert s.labels.tolist() == [0, 0, 0, 1, 1, 1]
    for k, name in enumerate([f"train/{c}/{i:04d}.jpg" for c in ("a_cls", "b_cls") for i in range(3)]):
        ref = np.asarray(Image.open(io.BytesIO(files[name])).convert("RGB"))
        np.testing.assert_array_equal(s.images[k].permute(1, 2, 0).numpy(), ref)
    t = load_split("cifar10-jpeg", "test", root=arch, cache_dir=tmp_path / "c")
    assert len(t) == 4 and t.num_classes == 2


def test_small_archive_corrupt_cache_is_rebuilt(tmp_path):
    arch = tmp_path / "small.tar.gz"
    _make_archive(arch)
    cache = tmp_path / "c"
    ref = load_split("cifar10-jpeg", "train", root=arch, cache_dir=cache)
    for f in cache.glob("*-train.pt"):
        f.write_bytes(f.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable cache"):
        again = load_split("cifar10-jpeg", "train", root=arch, cache_dir=cache)
    assert torch.equal(again.images, ref.images)


def test_small_archive_interrupted_cache_write_leaves_nothing(tmp_path, monkeypatch):
    arch = tmp_path / "small.tar.gz"
    _make_archive(arch)
    cache = tmp_path / "c"

    def interrupted(obj, f, *a, **k):
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_split("cifar10-jpeg", "train", root=arch, cache_dir=cache)
    assert not cache.exists() or list(cache.iterdir()) == []


def test_archive_errors(tmp_path):
    with pytest.raises(DataError, match="not found.*--data-root"):
        load_split("cifar10-jpeg", "train", root=tmp_path / "nope.tar.gz", cache_dir=tmp_path)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not a gzip file at all" * 100)
    with pytest.raises(DataError, match="corrupt"):
        load_split("cifar10-jpeg", "train", root=junk, cache_dir=tmp_path)
    with pytest.raises(DataError, match="unknown data set"):
        load_split("mnist", "train", root=tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        load_split("cifar10", "val", root=tmp_path)


# --------------------------------------------------------------------------- pickle format

from cifar_files import _write_cifar10, _write_cifar100  # noqa: E402



def _check_layout(split: Split, x: np.ndarray, y: list):
    n = x.shape[0]
    assert split.images.dtype == torch.uint8 and split.images.is_contiguous()
    assert tuple(split.images.shape) == (n, 3, 32, 32)
    assert split.labels.dtype == torch.int64 and split.labels.tolist() == y
    imgs = split.images.numpy()
    # row = R plane, then G, then B, each 32x32 row-major
    for i in (0, n - 1):
        for c in range(3):
            for (r, col) in ((0, 0), (5, 17), (31, 31)):
                assert imgs[i, c, r, col] == x[i, c * 1024 + r * 32 + col]
    np.testing.assert_array_equal(imgs.reshape(n, 3072), x)


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_cifar10_pickle_roundtrip(tmp_path, bytes_keys):
    ref = _write_cifar10(tmp_path, np.random.default_rng(1), bytes_keys)
    for split in ("train", "test"):
        s = load_split("cifar10", split, root=tmp_path)
        _check_layout(s, *ref[split])
        assert s.classes == CIFAR10_CLASSES
        assert "torchvision CIFAR10" in s.source
    # root may also be the data folder itself
    s = load_split("cifar10", "test", root=tmp_path / "cifar-10-batches-py")
    _check_layout(s, *ref["test"])


def test_cifar100_pickle_roundtrip(tmp_path):
    ref, names = _write_cifar100(tmp_path, np.random.default_rng(2))
    for split in ("train", "test"):
        s = load_split("cifar100", split, root=tmp_path)
        _check_layout(s, *ref[split])
        assert s.classes == names
        assert "torchvision CIFAR100" in s.source


@pytest.mark.parametrize("dataset,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_pickle_missing_folder(tmp_path, dataset, folder):
    with pytest.raises(DataError) as ei:
        load_split(dataset, "train", root=tmp_path / "empty")
    msg = str(ei.value)
    assert "--download" in msg and "--data-root" in msg and folder in msg and "not found" in msg


def test_pickle_missing_or_corrupt_file(tmp_path):
    _write_cifar10(tmp_path, np.random.default_rng(3), False)
    d = tmp_path / "cifar-10-batches-py"
    (d / "data_batch_3").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="corrupt"):
        load_split("cifar10", "train", root=tmp_path)
    (d / "data_batch_3").unlink()
    with pytest.raises(DataError, match="data_batch_3 is missing"):
        load_split("cifar10", "train", root=tmp_path)
    # the test split is still readable
    assert len(load_split("cifar10", "test", root=tmp_path)) == 10


# --------------------------------------------------------------------------- balanced_subset


def _imbalanced_labels():
    g = torch.Generator().manual_seed(5)
    return torch.randint(0, 10, (3000,), generator=g)


def test_balanced_subset_balanced_and_sorted():
    labels = _imbalanced_labels()
    idx = balanced_subset(labels, 500, seed=0)
    assert idx.dtype == torch.int64 and idx.numel() == 500
    assert torch.equal(idx, idx.sort().values) and idx.unique().numel() == 500
    assert labels[idx].bincount(minlength=10).tolist() == [50] * 10


def test_balanced_subset_remainder_spread():
    labels = _imbalanced_labels()
    counts = labels[balanced_subset(labels, 503, seed=4)].bincount(minlength=10)
    assert counts.sum() == 503 and sorted(counts.tolist()) == [50] * 7 + [51] * 3
    assert torch.equal(balanced_subset(labels, 503, seed=4), balanced_subset(labels, 503, seed=4))


def test_balanced_subset_seeded_and_global_rng_independent():
    labels = _imbalanced_labels()
    torch.manual_seed(0)
    a = balanced_subset(labels, 200, seed=7)
    torch.manual_seed(123)
    torch.rand(1000)
    b = balanced_subset(labels, 200, seed=7)
    c = balanced_subset(labels, 200, seed=8)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_balanced_subset_errors():
    labels = _imbalanced_labels()
    with pytest.raises(ValueError, match="only 3000"):
        balanced_subset(labels, 3001, seed=0)
    small = torch.tensor([0, 0, 0, 1])
    with pytest.raises(ValueError, match="class 1"):
        balanced_subset(small, 4, seed=0)  # needs 2 of class 1
    assert balanced_subset(small, 2, seed=0).numel() == 2


# --------------------------------------------------------------------------- CyclicSampler


@settings(max_examples=40, deadline=None, database=None)
@given(n=st.integers(1, 300), batch_size=st.integers(1, 64), seed=st.integers(0, 2**31 - 1))
def test_sampler_each_index_once_per_epoch(n, batch_size, seed):
    s = CyclicSampler(n, batch_size, seed)
    for _ in range(3):
        batches = s.next_epoch()
        assert len(batches) == s.batches_per_epoch == -(-n // batch_size)
        assert all(b.numel() == batch_size for b in batches[:-1])
        assert batches[-1].numel() == (n % batch_size or batch_size)
        assert all(b.dtype == torch.int64 for b in batches)
        assert torch.equal(torch.cat(batches).sort().values, torch.arange(n))
    assert s.epoch == 3


def test_sampler_reshuffles_and_is_seeded():
    s = CyclicSampler(1000, 128, seed=0)
    e1, e2 = torch.cat(s.next_epoch()), torch.cat(s.next_epoch())
    assert not torch.equal(e1, e2)
    t = CyclicSampler(1000, 128, seed=0)
    assert torch.equal(torch.cat(t.next_epoch()), e1)
    u = CyclicSampler(1000, 128, seed=1)
    assert not torch.equal(torch.cat(u.next_epoch()), e1)


def test_sampler_ignores_global_rng():
    ref = CyclicSampler(500, 64, seed=3)
    ref_epochs = [torch.cat(ref.next_epoch()) for _ in range(3)]
    s = CyclicSampler(500, 64, seed=3)
    got = []
    for k in range(3):
        torch.manual_seed(1000 + k)
        torch.randn(17)
        torch.randperm(99)
        got.append(torch.cat(s.next_epoch()))
    for a, b in zip(ref_epochs, got):
        assert torch.equal(a, b)


def test_sampler_state_roundtrip(tmp_path):
    s = CyclicSampler(777, 100, seed=11)
    for _ in range(2):
        s.next_epoch()
    state = s.state_dict()
    path = tmp_path / "sampler.pt"
    torch.save(state, path)
    future = [s.next_epoch() for _ in range(3)]

    r = CyclicSampler(777, 100, seed=999)  # seed comes from the state
    r.load_state_dict(torch.load(path, weights_only=True))
    assert r.epoch == 2
    replay = [r.next_epoch() for _ in range(3)]
    for fa, fb in zip(future, replay):
        assert len(fa) == len(fb)
        assert all(torch.equal(a, b) for a, b in zip(fa, fb))
    # the stored state is a snapshot: drawing more epochs does not change it
    s2 = CyclicSampler(777, 100, seed=0)
    s2.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(s2.next_epoch(), future[0]))
    with pytest.raises(ValueError, match="n=777"):
        CyclicSampler(778, 100, seed=0).load_state_dict(state)


# --------------------------------------------------------------------------- DeviceData


def _fake_images(n=512, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.tensor([30.0, 120.0, 200.0]).reshape(1, 3, 1, 1)
    spread = torch.tensor([10.0, 40.0, 25.0]).reshape(1, 3, 1, 1)
    x = base + spread * torch.randn(n, 3, 32, 32, generator=g)
    return x.round().clamp(0, 255).to(torch.uint8), torch.randint(0, 10, (n,), generator=g)


def test_device_data_normalization():
    images, labels = _fake_images()
    dd = DeviceData(images, labels, device="cpu")
    assert dd.images.dtype == torch.uint8 and dd.mean.dtype == torch.float32
    assert len(dd) == 512
    x, y = dd.batch(torch.arange(512))
    assert x.dtype == torch.float32 and tuple(x.shape) == (512, 3, 32, 32)
    assert y.dtype == torch.int64 and torch.equal(y, labels)
    torch.testing.assert_close(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std(dim=(0, 2, 3), correction=0), torch.ones(3), atol=1e-4, rtol=0)
    ref = (images.float() / 255 - dd.mean.reshape(1, 3, 1, 1)) / dd.std.reshape(1, 3, 1, 1)
    torch.testing.assert_close(x, ref, atol=1e-5, rtol=1e-5)


def test_device_data_batch_subset_and_channels_last():
    images, labels = _fake_images(64)
    dd = DeviceData(images, labels, channels_last=True)
    idx = torch.tensor([5, 0, 63, 5])
    x, y = dd.batch(idx)
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, labels[idx])
    x2, _ = dd.batch(idx, channels_last=False)
    assert x2.is_contiguous()
    torch.testing.assert_close(x, x2)
    torch.testing.assert_close(x[0], x[3])
    parts = list(dd.eval_batches(30))
    assert [p[0].shape[0] for p in parts] == [30, 30, 4]
    assert torch.equal(torch.cat([p[1] for p in parts]), labels)


def test_device_data_from_splits_uses_train_stats():
    tr_img, tr_lab = _fake_images(256, seed=1)
    te_img, te_lab = _fake_images(128, seed=2)
    te_img = (te_img.int() + 20).clamp(0, 255).to(torch.uint8)
    tr, te = DeviceData.from_splits(Split(tr_img, tr_lab, ["c"] * 10, "t"), Split(te_img, te_lab, ["c"] * 10, "t"))
    assert torch.equal(te.mean, tr.mean) and torch.equal(te.std, tr.std)
    m, s = channel_stats(tr_img)
    torch.testing.assert_close(tr.mean, m)
    x, _ = te.batch(torch.arange(128))
    assert (x.mean(dim=(0, 2, 3)) > 0.3).all()  # shifted test set is not re-centred


# --------------------------------------------------------------------------- building the JPEG archive


def _cifar10_folder(root: Path, per_class_train=2, per_class_test=1, seed=0):
    """A CIFAR-10 folder in torchvision's format with every class in both splits (labels cycle
    0..9 in batch order), smooth images (as photos are, so the JPEG error stays small)."""
    import pickle

    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    yy, xx = np.mgrid[0:32, 0:32]

    def images(n):
        base = rng.integers(40, 200, (n, 3, 1, 1))
        ramp = (base + (xx + yy)[None, None] * rng.integers(1, 3, (n, 3, 1, 1))).clip(0, 255)
        return ramp.astype(np.uint8).reshape(n, 3072)

    out = {"train": [], "test": []}
    n_train = 10 * per_class_train
    for i in range(5):  # the training images spread over the five batch files, in order
        lo, hi = i * n_train // 5, (i + 1) * n_train // 5
        x, y = images(hi - lo), [k % 10 for k in range(lo, hi)]
        with open(d / f"data_batch_{i + 1}", "wb") as f:
            pickle.dump({"data": x, "labels": y}, f)
        out["train"].append((x, y))
    x, y = images(10 * per_class_test), [k % 10 for k in range(10 * per_class_test)]
    with open(d / "test_batch", "wb") as f:
        pickle.dump({"data": x, "labels": y}, f)
    out["test"].append((x, y))
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({"label_names": CIFAR10_CLASSES}, f)
    return {s: (np.concatenate([c[0] for c in v]), sum((c[1] for c in v), [])) for s, v in out.items()}


def test_built_archive_layout_names_and_pixels(tmp_path):
    """gpcheck make-jpeg's builder on a synthetic CIFAR-10 folder: the shared archive's layout
    (train/<class>/NNNN.jpg from 0000 per class in batch order), a reproducible tar, every image
    encoded with quality 75 and 4:2:0, and the presets' loader reads it back."""
    ref = _cifar10_folder(tmp_path / "cifar")
    info = data.build_jpeg_archive(tmp_path / "cifar", tmp_path / "a" / "cifar10-jpeg.tar.gz")
    assert info["images"] == {"train": 20, "test": 10} and not info["tar_equals_shared"]
    raw = (tmp_path / "a" / "cifar10-jpeg.tar.gz").read_bytes()
    assert raw[:4] == b"\x1f\x8b\x08\x00" and raw[4:8] == b"\x00\x00\x00\x00"  # gzip, no name, no time stamp
    with tarfile.open(tmp_path / "a" / "cifar10-jpeg.tar.gz", "r:gz") as tf:
        members = tf.getmembers()
        names = [m.name for m in members]
        assert names == sorted(names) and len(names) == 2 + 20 + 30  # 2 splits, 20 class folders, 30 images
        assert all(m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == "" for m in members)
        assert all(m.mode == (0o755 if m.isdir() else 0o644) for m in members)
        assert "train/airplane/0000.jpg" in names and "train/airplane/0001.jpg" in names
        assert "train/airplane/0002.jpg" not in names and "test/truck/0000.jpg" in names
        # train/bird/0001.jpg is the second bird image in batch order: training image 12
        x, _ = ref["train"]
        got = tf.extractfile("train/bird/0001.jpg").read()
        buf = io.BytesIO()
        Image.fromarray(x[12].reshape(3, 32, 32).transpose(1, 2, 0)).save(buf, format="JPEG", quality=75,
                                                                          subsampling="4:2:0")
        assert got == buf.getvalue()
        im = Image.open(io.BytesIO(got))
        assert im.layer == [(1, 2, 2, 0), (2, 1, 1, 1), (3, 1, 1, 1)]  # 4:2:0 chroma subsampling
    s = load_split("cifar10-jpeg", "train", root=tmp_path / "a" / "cifar10-jpeg.tar.gz", cache_dir=tmp_path / "c")
    assert s.classes == CIFAR10_CLASSES and s.labels.tolist() == [c for c in range(10) for _ in range(2)]
    order = [i for c in range(10) for i in range(20) if i % 10 == c]  # by class, then number
    err = np.abs(s.images.numpy().astype(int) - x[order].reshape(20, 3, 32, 32).astype(int))
    assert err.mean() < 3, err.mean()  # lossy, but the same pictures
    # the same folder gives the same bytes again (no clock, no owner, no file order in them)
    again = data.build_jpeg_archive(tmp_path / "cifar", tmp_path / "b.tar.gz")
    assert again["tar_sha256"] == info["tar_sha256"] and again["sha256"] == info["sha256"]


@pytest.mark.skipif(not ARCHIVE.is_file(), reason="no shared CIFAR-10 JPEG archive")
def test_image_tar_rebuilds_the_shared_tar_byte_for_byte():
    """The shared archive's own 60,000 JPEG files, packed by the builder's tar writer, give the
    shared tar's sha256: only the JPEG encoder decides whether a build from CIFAR-10 matches."""
    import hashlib

    with tarfile.open(ARCHIVE, "r:gz") as tf:
        files = {m.name: tf.extractfile(m).read() for m in tf if m.isfile()}
    assert len(files) == 60_000
    tar = data.image_tar(files)
    assert hashlib.sha256(tar).hexdigest() == data.SHARED_TAR_SHA256
    gz, compressor = data.gzip_n9(tar)
    if compressor.startswith("gzip "):  # GNU gzip -n -9, as the shared file was made: the same file
        assert hashlib.sha256(gz).hexdigest() == data.SHARED_GZ_SHA256, compressor


def test_make_jpeg_command(tmp_path):
    from click.testing import CliRunner

    from validation.cli import main

    _cifar10_folder(tmp_path / "cifar", per_class_train=1, per_class_test=1)
    r = CliRunner().invoke(main, ["make-jpeg", "--from", str(tmp_path / "cifar"), "--out", str(tmp_path / "x.tar.gz"),
                                  "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"wrote {tmp_path / 'x.tar.gz'}: 20 images (train 10, test 10)" in r.output
    assert "not the shared archive's" in r.output and (tmp_path / "x.tar.gz").is_file()
    r = CliRunner().invoke(main, ["make-jpeg", "--from", str(tmp_path), "--out", str(tmp_path / "y.tar.gz")])
    assert r.exit_code == 2 and r.output.startswith(f"gpcheck: error: --from {tmp_path}: no cifar-10-batches-py/")
    assert not (tmp_path / "y.tar.gz").exists()


def test_no_data_messages_say_where_the_data_comes_from(tmp_path):
    """Not circular: the missing JPEG archive names its origin and how to build it; a failed
    download names the file to fetch by hand and where to put it."""
    with pytest.raises(DataError) as exc:
        load_split("cifar10-jpeg", "train", root=tmp_path / "nope.tar.gz", cache_dir=tmp_path)
    msg = str(exc.value)
    assert "gpcheck make-jpeg --from DIR --out FILE" in msg and 'README, "Data"' in msg and "--data-root" in msg
    import torchvision.datasets as tvd

    def offline(*a, **k):
        raise OSError("network is unreachable")

    mp = pytest.MonkeyPatch()
    mp.setattr(tvd, "CIFAR10", offline)
    try:
        with pytest.raises(DataError) as exc:
            load_split("cifar10", "train", root=tmp_path / "d", download=True)
    finally:
        mp.undo()
    msg = str(exc.value)
    assert tvd.CIFAR10.url in msg and "cifar-10-batches-py/" in msg and "--dataset cifar10-jpeg" in msg
