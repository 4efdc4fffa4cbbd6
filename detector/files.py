"""State files written so that a kill at any moment leaves the old file or the new one, never a part of one.

Every state file (checkpoints, JSON, YAML) goes through `atomic_file`: a temporary file beside the target
(`.NAME.RANDOM.tmp`), flushed and fsynced, then renamed over it. `sweep_temp_files` removes the temporary
files a killed process left behind; `read_json` turns a damaged state file into one clear error.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Any, Callable, Iterator

from .errors import DetectorError, StorageError

TEMP_GLOB = ".*.tmp"
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.[a-z0-9_]{8}\.tmp$")  # tempfile.mkstemp's 8 random characters


_FIXES = {errno.ENOSPC: "free some disk space", errno.EDQUOT: "free some of your disk quota",
          errno.EROFS: "make the folder writable", errno.EACCES: "make the folder writable",
          errno.EPERM: "make the folder writable", errno.EFBIG: "raise the file size limit (ulimit -f)"}


STORAGE_ERRNOS = frozenset(_FIXES)  # a full disk, a read-only folder: the machine's, not detector's


@contextlib.contextmanager
def writing(path: str | Path) -> Iterator[None]:
    """Turn a failed write of `path` (full disk, read-only folder) into one StorageError naming the file and
    the cause; the writes before it are intact, so the same command resumes once the cause is fixed."""
    try:
        yield
    except OSError as e:
        raise storage_error(path, e) from None


def storage_error(path: str | Path, e: OSError) -> StorageError:
    cause = os.strerror(e.errno) if e.errno else str(e)
    fix = _FIXES.get(e.errno, "fix the cause")
    return StorageError(f"{path}: cannot write it ({cause}); everything written before is kept: {fix} and run "
                        "the same command again")


class _Recording:
    """A file whose failed writes are remembered: torch.save reports a failed write as a RuntimeError
    ("enforce fail at inline_container.cc") that no longer says why, so the OSError is kept here."""

    def __init__(self, f: IO):
        self._f, self.error = f, None

    def write(self, data):
        try:
            return self._f.write(data)
        except OSError as e:
            self.error = e
            raise

    def __getattr__(self, name: str):
        return getattr(self._f, name)


@contextlib.contextmanager
def atomic_file(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary file beside `path`; on a clean exit it replaces `path`, on an error it is removed.
    A write the disk refuses is a StorageError (see `writing`); the old `path` stays as it was."""
    path = Path(path)
    with writing(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    recording = None
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; a shared studies/ needs what open() would make
        with os.fdopen(fd, mode) as f:
            recording = _Recording(f)
            yield recording
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        failed = recording.error if recording is not None and recording.error is not None else e
        if isinstance(failed, OSError):
            raise storage_error(path, failed) from None
        raise


@contextlib.contextmanager
def atomic_folder(path: str | Path) -> Iterator[Path]:
    """A folder built whole or not at all: yields an empty staging folder beside `path` (.NAME.stage, left over
    from a killed run and cleared first); on a clean exit it replaces `path` (the old one moved to .NAME.old
    and removed after), on an error it is removed and `path` stays as it was."""
    path = Path(path)
    stage, old = path.with_name(f".{path.name}.stage"), path.with_name(f".{path.name}.old")
    with writing(stage):
        shutil.rmtree(stage, ignore_errors=True)
        stage.mkdir(parents=True)
    try:
        yield stage
        shutil.rmtree(old, ignore_errors=True)
        if path.exists() or path.is_symlink():
            os.replace(path, old)
        try:
            os.replace(stage, path)
        except BaseException:
            if old.exists() or old.is_symlink():
                os.replace(old, path)  # the old folder back where it was
            raise
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    with atomic_file(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    return write_text(path, json.dumps(value, indent=indent))


def read_json(path: str | Path, fix: str = "delete it and run the same command again") -> Any:
    """A JSON state file, or a DetectorError naming the file and `fix` when it cannot be read."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise DetectorError(f"{path}: damaged state file ({type(e).__name__}: {e}); {fix}") from None


def remove_entry(path: str | Path) -> None:
    """Delete a file, a link (never what it points to) or a folder with what it holds."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def temp_target(path: str | Path) -> str | None:
    """The file name an `atomic_file` temporary was going to replace, or None for any other name."""
    found = _TEMP_NAME.match(Path(path).name)
    return found["target"] if found else None


def sweep_temp_files(folder: str | Path, is_ours: Callable[[str], bool]) -> int:
    """Remove, in `folder` only, the temporaries a killed `atomic_file` left for the names `is_ours` accepts
    (another program's hidden .tmp files stay); returns how many."""
    removed = 0
    for tmp in Path(folder).glob(TEMP_GLOB) if Path(folder).is_dir() else []:
        target = temp_target(tmp)
        if target is not None and is_ours(target) and tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed
