"""Files that are whole or absent: atomic writes, unique temporary names, digests.

(Over 400 lines on purpose: the atomic writer, the confinement checks and the validating JSON
reader are the one place of what a file on disk may be; every writer and reader goes through it.)

Every file gpcheck writes goes through :func:`write_bytes`: the bytes go to a temporary file
with a name no other writer can pick (``.NAME.<pid>@<host>.<random>.tmp`` in the same folder),
are flushed and fsynced, the file is renamed over ``NAME`` and the folder is fsynced. A reader
therefore sees the old file or the new one, never a half-written one, and two processes writing
the same file never share a temporary. A temporary left by a killed process is removed by
:func:`clean_stale_tmp` once its process is gone: judged by host and pid, so on a file system that
several machines share (NFS, Lustre) a machine never removes another's temporary while it is
being written (another host's is removed only when it has not changed for
:data:`FOREIGN_TMP_AGE_S`).

Paths: :func:`inside` and :func:`check_links` refuse a path that leaves its root through a link
(:class:`PathEscape`), so nothing is written, wiped or read as state outside ``--out``.

JSON: :func:`read_json` is the one reader of every JSON file gpcheck reads: a bounded nesting
depth (:data:`MAX_JSON_DEPTH`), an optional shape check (:func:`check_shape`), and every failure
one :class:`BadFile` naming the file.

An ``OSError`` raised while writing (a full disk, a folder without write permission) names the
file it was writing, so the command line can say which path failed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import secrets
import signal
import socket
import time
from pathlib import Path
from typing import Any

#: a temporary of :func:`tmp_path`: ``.NAME.<pid>@<host>.<8 hex>.tmp``; before hosts were in the
#: name, ``.NAME.<pid>.<8 hex>.tmp`` (its host unknown)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(@(?P<host>[A-Za-z0-9-]+))?\.[0-9a-f]{8}\.tmp$")
#: a temporary of another host (or of unknown host) is stale only once unchanged this long: no
#: write of gpcheck takes a day, and another machine's processes cannot be asked
FOREIGN_TMP_AGE_S = 24 * 3600

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


def host_tag() -> str:
    """This machine's name as it goes into file names (letters, digits and ``-`` only)."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname() or "unknown")[:63] or "unknown"


def tmp_path(path: Path) -> Path:
    """A temporary name beside ``path`` that is unique to this process (on this host) and call."""
    return path.with_name(f".{path.name}.{os.getpid()}@{host_tag()}.{secrets.token_hex(4)}.tmp")


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


#: deepest nesting of arrays and objects that :func:`read_json` accepts (gpcheck's own files
#: nest 5 levels; a deeper one is not gpcheck's, and would exhaust the parser's recursion)
MAX_JSON_DEPTH = 64
_JSON_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')


def json_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in ``text`` (strings skipped), without parsing."""
    depth = deepest = 0
    for m in _JSON_TOKENS.finditer(text):
        c = m.group()
        if c in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif c in "]}":
            depth -= 1
    return deepest


def parse_json(text: str, where: str | os.PathLike, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """Parse ``text`` (the content of ``where``); :class:`BadFile` naming ``where`` when it is not
    JSON or nests deeper than ``max_depth``."""
    if json_depth(text) > max_depth:
        raise BadFile(where, f"nests deeper than {max_depth} levels; it is not a file gpcheck wrote")
    try:
        return json.loads(text)
    except (json.JSONDecodeError, RecursionError, ValueError) as exc:
        raise BadFile(where, f"is not readable JSON ({type(exc).__name__}: {exc})") from None


def read_json(path: str | os.PathLike, shape: Any = None, what: str | None = None) -> Any:
    """Parse a JSON file; a missing, unreadable, malformed or too deeply nested file, or one that
    does not have ``shape`` (see :func:`check_shape`), raises :class:`BadFile` naming the file
    (``what``: what it should have been, for the message)."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise BadFile(path, "is missing") from None
    except IsADirectoryError:
        raise BadFile(path, "is a folder, not a JSON file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadFile(path, f"is not readable JSON ({type(exc).__name__}: {exc})") from None
    obj = parse_json(text, path)
    if shape is not None:
        try:
            check_shape(obj, shape)
        except ShapeError as exc:
            raise BadFile(path, f"is not {what or 'what gpcheck wrote there'}: {exc}") from None
    return obj


def canonical_sha256(obj: Any) -> str:
    """The sha256 of ``obj``'s canonical JSON (sorted keys, no spaces, UTF-8): the same for any
    formatting of the same content."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=True)
    return sha256_bytes(text.encode("utf-8", "surrogatepass"))


# -- shapes: what a JSON value must look like -----------------------------------------------------
class ShapeError(ValueError):
    """A JSON value without the shape asked for; the message names where in the value."""


class Opt:
    """An optional key of an object shape (``{"key": Opt(shape)}``); ``null`` is allowed too."""

    def __init__(self, shape: Any):
        self.shape = shape


class Nullable:
    """``shape`` or ``null``."""

    def __init__(self, shape: Any):
        self.shape = shape


class MapOf:
    """An object with any keys, every value of ``shape``."""

    def __init__(self, shape: Any):
        self.shape = shape


class ListOf:
    """An array whose every element has ``shape``."""

    def __init__(self, shape: Any):
        self.shape = shape


class OneOf:
    """One of the given values."""

    def __init__(self, *values: Any):
        self.values = values


class Int:
    """A whole number (not a bool) from ``lo`` to ``hi``."""

    def __init__(self, lo: int | None = None, hi: int | None = None):
        self.lo, self.hi = lo, hi


class Num:
    """A finite number (not a bool) from ``lo`` to ``hi``."""

    def __init__(self, lo: float | None = None, hi: float | None = None):
        self.lo, self.hi = lo, hi


class Match:
    """A string matching the regular expression ``pattern`` (whole)."""

    def __init__(self, pattern: str, say: str):
        self.pattern, self.say = re.compile(pattern), say


_KIND = {dict: "an object", list: "an array", str: "a string", bool: "true or false", int: "a whole number",
         float: "a number", type(None): "null"}


def _kind(obj: Any) -> str:
    return _KIND.get(type(obj), type(obj).__name__)


def check_shape(obj: Any, shape: Any, where: str = "") -> None:
    """Raise :class:`ShapeError` unless ``obj`` has ``shape``: a type (``str``, ``bool``, ``dict``,
    ...), a tuple of shapes (any of them), a dict ``{key: shape}`` (an object with these keys, more
    allowed; a key whose shape is :class:`Opt` may be absent), or one of :class:`Nullable`,
    :class:`MapOf`, :class:`ListOf`, :class:`OneOf`, :class:`Int`, :class:`Num`, :class:`Match`."""
    at = where or "the top level"
    if isinstance(shape, tuple):
        errors = []
        for s in shape:
            try:
                return check_shape(obj, s, where)
            except ShapeError as exc:
                errors.append(str(exc))
        raise ShapeError(errors[0] if len(errors) == 1 else f"{at}: none of the allowed forms ({'; '.join(errors)})")
    if isinstance(shape, Opt):
        shape = Nullable(shape.shape)
    if isinstance(shape, Nullable):
        if obj is not None:
            check_shape(obj, shape.shape, where)
        return
    if isinstance(shape, dict):
        if not isinstance(obj, dict) and not where:
            raise ShapeError(f"it does not hold a JSON object (it holds {_kind(obj)})")
        if not isinstance(obj, dict):
            raise ShapeError(f"{at} must be an object, not {_kind(obj)}")
        for key, sub in shape.items():
            if key not in obj:
                if isinstance(sub, Opt):
                    continue
                raise ShapeError(f"{at} lacks {key!r}")
            check_shape(obj[key], sub, f"{where}.{key}" if where else key)
        return
    if isinstance(shape, MapOf):
        if not isinstance(obj, dict):
            raise ShapeError(f"{at} must be an object, not {_kind(obj)}")
        for key, val in obj.items():
            check_shape(val, shape.shape, f"{where}.{key}" if where else key)
        return
    if isinstance(shape, ListOf):
        if not isinstance(obj, list):
            raise ShapeError(f"{at} must be an array, not {_kind(obj)}")
        for i, val in enumerate(obj):
            check_shape(val, shape.shape, f"{where}[{i}]")
        return
    if isinstance(shape, OneOf):
        if not any(type(obj) is type(v) and obj == v for v in shape.values):
            raise ShapeError(f"{at} is {obj!r:.60}; it must be one of {', '.join(map(repr, shape.values))}")
        return
    if isinstance(shape, (Int, Num)):
        ok_type = (int,) if isinstance(shape, Int) else (int, float)
        if isinstance(obj, bool) or not isinstance(obj, ok_type) or (isinstance(obj, float) and not math.isfinite(obj)):
            raise ShapeError(f"{at} is {obj!r:.60}; it must be a {'whole' if isinstance(shape, Int) else 'finite'} number")
        if (shape.lo is not None and obj < shape.lo) or (shape.hi is not None and obj > shape.hi):
            raise ShapeError(f"{at} is {obj!r}; it must be from {shape.lo} to {shape.hi}")
        return
    if isinstance(shape, Match):
        if not isinstance(obj, str) or not shape.pattern.fullmatch(obj):
            raise ShapeError(f"{at} is {obj!r:.60}; it must be {shape.say}")
        return
    if shape is float:
        shape = (int, float)
    if isinstance(shape, type) or (isinstance(shape, tuple) and all(isinstance(t, type) for t in shape)):
        if isinstance(obj, bool) and shape is not bool:
            raise ShapeError(f"{at} must be {_KIND.get(shape, shape)}, not true or false")
        if not isinstance(obj, shape):
            raise ShapeError(f"{at} must be {_KIND.get(shape, shape)}, not {_kind(obj)}")
        return
    raise TypeError(f"unknown shape {shape!r}")


class BadFile(ValueError):
    """A file that is missing, truncated, altered or malformed; names the file and the fault."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path} {reason}")


def clean_stale_tmp(folder: str | os.PathLike, recursive: bool = True, now: float | None = None) -> list[Path]:
    """Remove the temporaries of :func:`write_bytes` whose writing process no longer runs.

    Judged by host and pid: a temporary of this host is stale when its pid is not alive here. One
    of another host (a file system that several machines share), or of an older gpcheck whose
    names carry no host, cannot be judged from here: it is stale only when it has not been
    modified for :data:`FOREIGN_TMP_AGE_S`. Links are not followed."""
    folder = Path(folder)
    if not folder.is_dir() or folder.is_symlink():
        return []
    me, now = host_tag(), time.time() if now is None else now
    removed = []
    for root, dirs, files in os.walk(folder):  # never into a linked folder
        for f in files:
            m = _TMP.match(f)
            if not m:
                continue
            p = Path(root) / f
            if m["host"] == me:
                stale = not _alive(int(m["pid"]))
            else:
                try:
                    stale = now - p.lstat().st_mtime > FOREIGN_TMP_AGE_S
                except OSError:
                    continue
            if stale:
                try:
                    p.unlink()
                    removed.append(p)
                except OSError:
                    pass
        if not recursive:
            break
    return removed


# -- paths that stay inside their root -------------------------------------------------------------
class PathEscape(ValueError):
    """A path that gpcheck would write, wipe or read as state leads outside its root (through a
    link, or ``..``); the message says which, where to, and what to do."""


def inside(path: str | os.PathLike, root: str | os.PathLike, what: str = "") -> Path:
    """``path`` (joined to ``root`` when relative), after checking that, with every link resolved,
    it is ``root`` or lies under it; else :class:`PathEscape`."""
    root = Path(root)
    path = root / path
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    if real != real_root and not real.startswith(real_root.rstrip(os.sep) + os.sep):
        raise PathEscape(f"{path}{' (' + what + ')' if what else ''} leads outside {root} (to {real}); gpcheck "
                         f"writes and reads its state only inside {root}: remove the link, or give a path inside it")
    return path


def not_a_link(path: str | os.PathLike, what: str) -> Path:
    """``path``, after checking that it is not a link (a folder gpcheck may wipe must be its own)."""
    path = Path(path)
    if path.is_symlink():
        raise PathEscape(f"{path} ({what}) is a link (to {os.readlink(path)}); gpcheck wipes and rewrites that "
                         "folder, and never through a link: remove the link")
    return path


def check_links(root: str | os.PathLike) -> None:
    """Refuse (:class:`PathEscape`) any link under ``root`` that leads to a folder outside it: what
    gpcheck writes there would land outside. Links to files are left alone (a write replaces the
    link itself, never its target); links are not followed."""
    root = Path(root)
    if not root.is_dir():
        return
    real_root = os.path.realpath(root).rstrip(os.sep) + os.sep
    for where, dirs, files in os.walk(root):
        for name in dirs + files:  # os.walk lists a link to a folder among dirs, without entering it
            p = os.path.join(where, name)
            if os.path.islink(p) and os.path.isdir(p):
                real = os.path.realpath(p)
                if not (real + os.sep).startswith(real_root):
                    raise PathEscape(f"{p} is a link to a folder outside {root} (to {real}); gpcheck writes only "
                                     f"inside {root}, and would write through it: remove the link")


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
