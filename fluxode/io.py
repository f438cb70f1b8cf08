"""Output files written atomically: a reader sees the old file or the new one, never half of one.

Each writer puts the bytes in a temporary file in the same folder, flushes and fsyncs it, then
``os.replace``s it over the target.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
from pathlib import Path


def _umask() -> int:
    """The process umask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 → the mode open() would give
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def write_text(path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())


def write_json(path, obj) -> Path:
    return write_text(path, json.dumps(obj, indent=2, default=_jsonable) + "\n")


def save_figure(fig, path, **kwargs) -> Path:
    """Save a figure (anything with ``savefig``) atomically (format from the suffix)."""
    buf = io.BytesIO()
    fig.savefig(buf, format=Path(path).suffix.lstrip(".") or "png", bbox_inches="tight",
                **kwargs)
    return atomic_write_bytes(path, buf.getvalue())


def save_torch(path, obj) -> Path:
    """torch.save, atomically."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getvalue())


def _jsonable(x):
    try:
        import numpy as np
        import torch

        if isinstance(x, torch.Tensor):
            return x.tolist()
        if isinstance(x, np.generic | np.ndarray):
            return x.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(x, Path):
        return str(x)
    raise TypeError(f"cannot write {type(x).__name__} as JSON")


# --- output directories: checked before any work, owned by one run at a time -----------------
LOCK = ".fluxode.lock"


class OutputError(ValueError):
    """An output directory that cannot be used (not writable, under a file, owned by another
    run)."""


def check_writable(out, flag: str = "--out") -> Path:
    """``out`` as a Path, refused unless it is a directory (or can become one) that this process
    can write into: checked by creating and removing a probe file in ``out`` or in its nearest
    existing ancestor, so nothing that existed changes."""
    if out is None or str(out).strip() == "":
        raise OutputError(f"{flag} is empty: give an output directory")
    out = Path(out)
    probe_dir = out
    while not probe_dir.exists():
        if probe_dir.parent == probe_dir:
            break
        probe_dir = probe_dir.parent
    if probe_dir.exists() and not probe_dir.is_dir():
        where = "is a file" if probe_dir == out else f"is under the file {probe_dir}"
        raise OutputError(f"{flag} {out} {where}: give a directory path")
    try:
        with tempfile.TemporaryFile(dir=probe_dir, prefix=".fluxode-probe."):
            pass
    except OSError as err:
        raise OutputError(f"{flag} {out} is not writable ({err.strerror or err}): choose "
                          "another directory") from None
    return out


class DirectoryLock:
    """``out/.fluxode.lock``: the owner's pid, host and start time, held with an exclusive
    ``flock`` for the owner's lifetime (the kernel drops it when the owner dies, however).

    A lock that another live process holds refuses the run. A lock file that nobody holds is
    stale (its owner was killed): on this host it is reported through ``note`` and taken over;
    a stale lock from another host cannot be checked and is refused."""

    def __init__(self, out, note=None):
        self.out, self.note = Path(out), note
        self.path = self.out / LOCK
        self.fd: int | None = None
        self.created_dir = False

    def acquire(self) -> DirectoryLock:
        import fcntl
        import socket

        if not self.out.exists():
            self.out.mkdir(parents=True)
            self.created_dir = True
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                owner = _read_owner(self.path)
                raise OutputError(f"{self.out} is in use by another run (pid "
                                  f"{owner.get('pid', '?')} on {owner.get('host', '?')}): wait "
                                  "for it to finish or choose another --out") from None
            try:  # the owner may have removed the file between our open and our lock
                if os.fstat(fd).st_ino == os.stat(self.path).st_ino:
                    break
            except FileNotFoundError:
                pass
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        else:  # pragma: no cover - a lock file replaced a hundred times in a row
            raise OutputError(f"could not lock {self.path}: it keeps changing")
        owner = _read_owner(self.path)
        host = socket.gethostname()
        if owner and owner.get("host") not in (None, host):
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise OutputError(f"{self.out} has a lock from pid {owner.get('pid')} on host "
                              f"{owner.get('host')}, which this host cannot check: if that run "
                              f"is gone, delete {self.path}")
        if owner and self.note:
            self.note(f"stale lock in {self.out} from pid {owner.get('pid')} on {host} "
                      f"(started {owner.get('started', '?')}), which is no longer running: "
                      "taking it over")
        data = json.dumps({"pid": os.getpid(), "host": host,
                           "started": _now()}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self, remove_dir_if_created: bool = False) -> None:
        if self.fd is None:
            return
        import fcntl

        try:
            self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None
        if remove_dir_if_created and self.created_dir:
            try:
                self.out.rmdir()  # only when empty: nothing of anyone else's goes
            except OSError:
                pass

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read_owner(path: Path) -> dict:
    try:
        owner = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return owner if isinstance(owner, dict) else {}


def _now() -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def check_not_in_use(out) -> None:
    """Refuse ``out`` while a live run holds its lock (read-only probe: nothing is created)."""
    import fcntl

    path = Path(out) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        owner = _read_owner(path)
        raise OutputError(f"{out} is in use by another run (pid {owner.get('pid', '?')} on "
                          f"{owner.get('host', '?')}): wait for it to finish or choose another "
                          "--out") from None
    finally:
        os.close(fd)
