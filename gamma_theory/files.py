"""Files that are whole or absent: atomic writes, unique temporary names, digests.

Every file gpcheck writes goes through :func:`write_bytes`: the bytes go to a temporary file
with a name no other writer can pick (``.NAME.<pid>.<random>.tmp`` in the same folder), are
flushed and fsynced, the file is renamed over ``NAME`` and the folder is fsynced. A reader
therefore sees the old file or the new one, never a half-written one, and two processes writing
the same file never share a temporary. A temporary left by a killed process is removed by
:func:`clean_stale_tmp` once its process is gone.

An ``OSError`` raised while writing (a full disk, a folder without write permission) names the
file it was writing, so the command line can say which path failed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import secrets
import signal
from pathlib import Path
from typing import Any

_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[0-9a-f]{8}\.tmp$")

#: Test hook for crash tests: ``GPCHECK_KILL_AT=POINT`` or ``POINT#N`` makes this process
#: SIGKILL itself the first (N-th) time it reaches ``POINT``. Points: ``after:FILENAME``, right
#: after a file of that name was renamed into place, and the named points of deep/measure.py.
KILL_ENV = "GPCHECK_KILL_AT"
_reached: dict[str, int] = {}


def fault_point(point: str) -> None:
    """SIGKILL this process here if ``$GPCHECK_KILL_AT`` names ``point`` (see ``KILL_ENV``)."""
    want = os.environ.get(KILL_ENV)
    if not want:
        return
    name, _, nth = want.partition("#")
    if name != point:
        return
    _reached[point] = _reached.get(point, 0) + 1
    if _reached[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def tmp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that is unique to this process and call."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def fsync_dir(folder: str | os.PathLike) -> None:
    """Make a rename in ``folder`` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically (write, fsync, rename, fsync the folder); return
    its sha256. Parent folders are created."""
    return write_stream(path, lambda fh: fh.write(data))[0]


class _HashingWriter:
    """A binary file object over a descriptor that hashes what passes through it."""

    def __init__(self, fd: int):
        self.fd, self.hash, self.size = fd, hashlib.sha256(), 0
        self.error: OSError | None = None  # a writer in C (torch.save) may wrap it in its own error

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        n = len(view)
        self.hash.update(view)
        try:
            while view:
                view = view[os.write(self.fd, view):]
        except OSError as exc:
            self.error = exc
            raise
        self.size += n
        return n

    def flush(self) -> None:
        pass


def write_stream(path: str | os.PathLike, produce) -> tuple[str, int]:
    """Write what ``produce(fh)`` writes to the binary file object ``fh`` to ``path``
    atomically (as :func:`write_bytes`), without holding it in memory; returns its sha256 and
    size."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _named(exc, path.parent) from None
    tmp = tmp_path(path)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        fh = _HashingWriter(fd)
        try:
            try:
                produce(fh)
            except Exception:
                if fh.error is not None:  # the disk's error, not the wrapper's
                    raise fh.error from None
                raise
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise _named(exc, path) from None
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(path.parent)
    fault_point(f"after:{path.name}")
    return fh.hash.hexdigest(), fh.size


def write_text(path: str | os.PathLike, text: str) -> Path:
    write_bytes(path, text.encode("utf-8"))
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, **kw) -> Path:
    kw.setdefault("indent", 2)
    return write_text(path, json.dumps(obj, **kw))


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a missing, unreadable or malformed file raises :class:`BadFile`."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise BadFile(path, "is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadFile(path, f"is not readable JSON ({type(exc).__name__}: {exc})") from None


class BadFile(ValueError):
    """A file that is missing, truncated, altered or malformed; names the file and the fault."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} {reason}")


def clean_stale_tmp(folder: str | os.PathLike, recursive: bool = True) -> list[Path]:
    """Remove the temporaries of :func:`write_bytes` whose writing process no longer runs."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.rglob(".*.tmp") if recursive else folder.glob(".*.tmp"):
        m = _TMP.match(p.name)
        if m and not _alive(int(m["pid"])):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _named(exc: OSError, path: Path) -> OSError:
    """The same error, naming ``path`` (``os.write`` on a full disk names no file)."""
    code = exc.errno if exc.errno is not None else errno.EIO
    return type(exc)(code, exc.strerror or str(exc), str(path))
