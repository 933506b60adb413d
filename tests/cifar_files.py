"""Tiny CIFAR-10/100 folders in torchvision's on-disk pickle format, written by the tests themselves."""

import pickle
from pathlib import Path

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj, bytes_keys: bool):
    if bytes_keys:
        obj = {k.encode(): v for k, v in obj.items()}
    with open(path, "wb") as f:
        pickle.dump(obj, f)


def _write_cifar10(root: Path, rng, bytes_keys: bool):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    chunks = {}
    for i in range(1, 6):  # 5 x 4 = 20 train images
        x = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        y = rng.integers(0, 10, 4).tolist()
        _dump(d / f"data_batch_{i}", {"data": x, "labels": y, "batch_label": f"b{i}"}, bytes_keys)
        chunks.setdefault("train", []).append((x, y))
    x = rng.integers(0, 256, (10, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, 10).tolist()
    _dump(d / "test_batch", {"data": x, "labels": y}, bytes_keys)
    chunks["test"] = [(x, y)]
    names = [c.encode() if bytes_keys else c for c in CIFAR10_CLASSES]
    _dump(d / "batches.meta", {"label_names": names, "num_vis": 3072}, bytes_keys)
    return {s: (np.concatenate([c[0] for c in v]), sum((c[1] for c in v), [])) for s, v in chunks.items()}


def _write_cifar100(root: Path, rng, n_train=20):
    """``n_train`` training images; with ``n_train >= 100`` every class has one at least."""
    d = root / "cifar-100-python"
    d.mkdir(parents=True)
    names = [f"class_{i:02d}" for i in range(100)]
    out = {}
    for split, n in (("train", n_train), ("test", 10)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = (rng.permutation(n) % 100).tolist() if n >= 100 else rng.integers(0, 100, n).tolist()
        _dump(d / split, {"data": x, "fine_labels": y, "coarse_labels": [v // 5 for v in y]}, False)
        out[split] = (x, y)
    _dump(d / "meta", {"fine_label_names": names, "coarse_label_names": [f"s{i}" for i in range(20)]}, False)
    return out, names


