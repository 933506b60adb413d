"""Run state on disk (theta_0, checkpoints, theta*) that is verified before it is trusted.

A state file ``X.pt`` is written atomically (:func:`gamma_theory.files.write_bytes`) and then
``X.pt.sha256`` records its size and digest. :func:`load_state` checks both before unpickling,
and unpickles with ``weights_only=True`` (tensors, dicts, lists and numbers only), so a truncated,
bit-flipped or foreign file raises :class:`StateDamaged` naming the file, never a confusing error
from deep inside torch, and never runs code from the output folder.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from gamma_theory.files import BadFile, sha256_bytes, sha256_file, write_stream, write_text


class StateDamaged(RuntimeError):
    """A run-state file is missing, truncated, altered or unreadable."""

    def __init__(self, path: str | Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} {reason}")

    @classmethod
    def from_bad_file(cls, exc: BadFile) -> "StateDamaged":
        return cls(exc.path, exc.reason)


def _digest_path(path: Path) -> Path:
    return path.with_name(path.name + ".sha256")


def save_state(obj, path: str | Path) -> str:
    """``torch.save`` ``obj`` to ``path`` atomically, then its digest beside it; returns the digest.
    The bytes stream to the file as torch writes them (no copy of the state in memory)."""
    path = Path(path)
    digest, size = write_stream(path, lambda fh: torch.save(obj, fh))
    write_text(_digest_path(path), f"{digest} {size}\n")
    return digest


def load_state(path: str | Path, device: torch.device | str = "cpu", mmap: bool = False):
    """Load what :func:`save_state` wrote, after checking its size and digest.

    ``mmap=True``: the file is checked by streaming it and then mapped, not read: a tensor takes
    memory only when it is used (to compare the model part of a checkpoint, say). Keep
    ``device`` the CPU then, or every tensor is copied to the device."""
    path = Path(path)
    want, size = _written(path)
    if mmap:  # files are replaced by rename, never rewritten: the mapping holds the bytes checked here
        _verify(path, path.stat().st_size, lambda: sha256_file(path), want, size)
        source, how = path, {"mmap": True}
    else:
        data = path.read_bytes()
        _verify(path, len(data), lambda: sha256_bytes(data), want, size)
        source, how = io.BytesIO(data), {}
    try:
        return torch.load(source, map_location=device, weights_only=True, **how)
    except Exception as exc:  # noqa: BLE001 - verified bytes that still do not load: say which file
        raise StateDamaged(path, f"cannot be loaded ({type(exc).__name__}: {exc})") from None


def _written(path: Path) -> tuple[str, int]:
    """The digest and size recorded beside ``path``; :class:`StateDamaged` if either is missing."""
    side = _digest_path(path)
    if not path.is_file():
        raise StateDamaged(path, "is missing")
    try:
        want, size = side.read_text().split()
        return want, int(size)
    except FileNotFoundError:
        raise StateDamaged(path, f"has no {side.name} (it was not written to the end)") from None
    except (OSError, ValueError, UnicodeDecodeError):
        raise StateDamaged(side, "is not readable") from None


def verify_state(path: str | Path) -> None:
    """Check a state file's size and digest against what :func:`save_state` recorded, without
    loading it; :class:`StateDamaged` names the file when it is missing, truncated or altered."""
    path = Path(path)
    want, size = _written(path)
    _verify(path, path.stat().st_size, lambda: sha256_file(path), want, size)


def _verify(path: Path, got_size: int, digest, want: str, size: int) -> None:
    """The file's size, then its sha256 (``digest()``, computed only when the size is right), as written."""
    if got_size != size:
        raise StateDamaged(path, f"is truncated or altered ({got_size} bytes, {size} written)")
    if digest() != want:
        raise StateDamaged(path, "is altered (its sha256 differs from the one written with it)")


def remove_state(path: str | Path) -> None:
    path = Path(path)
    path.unlink(missing_ok=True)
    _digest_path(path).unlink(missing_ok=True)
