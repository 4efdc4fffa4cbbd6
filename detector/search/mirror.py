"""A folder's copy in the artifact store, kept as the folder changes: each sync uploads the files whose
content changed (an object per version, named by its sha256), returns the new index for the caller to record
in the Optuna storage, and only then removes the versions it replaced, so the recorded index always names
objects that exist. `restore` brings a recorded folder back on any machine."""
from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, BinaryIO, Callable

from ..errors import ArtifactStoreError
from ..files import temp_target
from ..layout import LOCK, STUDY_FILES
from ..training.callbacks import RESUME, Callback, FitState
from .artifacts import Artifacts, sha256_of

SKIPPED = {LOCK, STUDY_FILES["lock"], STUDY_FILES["publish_lock"]}  # held by the writing process, never copied


@dataclass(frozen=True)
class Stored:
    """One file's uploaded version."""

    key: str
    sha256: str
    size: int

    def to_list(self) -> list[Any]:
        return [self.key, self.sha256, self.size]


Index = dict[str, Stored]  # relative POSIX path -> its uploaded version


def index_from(recorded: dict[str, Any] | None) -> Index:
    """An index as the storage records it ({path: [key, sha256, size]}), its paths checked: a path that
    leaves the folder is refused, whoever wrote it."""
    index = {}
    try:
        entries = [(str(name), str(key), str(sha), int(size)) for name, (key, sha, size) in (recorded or {}).items()]
    except (AttributeError, TypeError, ValueError):
        raise ArtifactStoreError("the recorded file list is not {path: [key, sha256, size]}; it is not used (was "
                                 "the storage edited by hand?)") from None
    for name, key, sha, size in entries:
        path = PurePosixPath(name)
        if path.is_absolute() or ".." in path.parts or not path.parts or "\\" in name:
            raise ArtifactStoreError(f"the recorded file list names {name!r}, which leaves its folder; it is "
                                     "not used (was the storage edited by hand?)")
        index[name] = Stored(key, sha, size)
    return index


def index_to(index: Index) -> dict[str, list[Any]]:
    return {name: s.to_list() for name, s in sorted(index.items())}


class FolderMirror:
    """Uploads what changed in `root` since the last sync, under the key prefix `base`: in the caller's
    thread (`sync`), or in one background thread while training goes on (`sync_in_background`), one sync at
    a time; a background sync's error is raised by the next sync or `wait`."""

    def __init__(self, artifacts: Artifacts, root: Path, base: str, index: Index | None = None):
        self.artifacts, self.root, self.base = artifacts, Path(root), base
        self.index: Index = dict(index or {})
        self.hashes: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256) seen here
        self.jobs: list[tuple[float, int]] = []  # (seconds, bytes) of each sync that sent something
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def files(self) -> dict[str, Path]:
        if not self.root.is_dir():
            return {}
        return {p.relative_to(self.root).as_posix(): p for p in sorted(self.root.rglob("*"))
                if p.is_file() and not p.is_symlink() and p.name not in SKIPPED and temp_target(p) is None}

    def sync(self, record: Callable[[Index], None]) -> int:
        """Upload the changed files, `record` the new index, remove the replaced versions; the bytes sent."""
        self.wait()
        return self._upload(self._snapshot(), record)

    def sync_in_background(self, record: Callable[[Index], None]) -> None:
        """`sync` in a thread, from the files as they are now: a file replaced while it uploads (last.pt at
        the next epoch) is read from the version open here."""
        self.wait()
        snapshot = self._snapshot()
        self._thread = threading.Thread(target=self._background, args=(snapshot, record), daemon=True)
        self._thread.start()

    def wait(self) -> None:
        """Until the background sync ends; its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def _background(self, snapshot: dict[str, _Version], record: Callable[[Index], None]) -> None:
        try:
            self._upload(snapshot, record)
        except BaseException as e:  # raised in the training thread by the next sync
            self._error = e

    def _snapshot(self) -> dict[str, _Version]:
        """Each file's version now: known (this mirror hashed it and the index holds it) or opened to read."""
        out = {}
        for name, path in self.files().items():
            try:
                stat = path.stat()
                seen = self.hashes.get(name)
                old = self.index.get(name)
                if seen and seen[:2] == (stat.st_size, stat.st_mtime_ns) and old and old.sha256 == seen[2]:
                    out[name] = _Version(stat.st_size, stat.st_mtime_ns, seen[2], None)
                else:
                    out[name] = _Version(stat.st_size, stat.st_mtime_ns, None, open(path, "rb"))
            except FileNotFoundError:  # deleted since it was listed: it is gone from the store too
                continue
        return out

    def _upload(self, snapshot: dict[str, _Version], record: Callable[[Index], None]) -> int:
        started, sent, index = time.perf_counter(), 0, {}
        try:
            for name, version in snapshot.items():
                sha = version.sha256 or hashlib.file_digest(version.source, "sha256").hexdigest()
                self.hashes[name] = (version.size, version.mtime_ns, sha)
                old = self.index.get(name)
                if old is not None and old.sha256 == sha:
                    index[name] = old
                    continue
                key = self.artifacts.key(self.base, f"{name}@{sha[:16]}")
                self.artifacts.put(version.source, key, str(self.root / name))
                index[name], sent = Stored(key, sha, version.size), sent + version.size
        finally:
            for version in snapshot.values():
                if version.source is not None:
                    version.source.close()
        if index == self.index:
            return 0
        record(index)
        replaced = {s.key for s in self.index.values()} - {s.key for s in index.values()}
        self.index = index
        for key in sorted(replaced):
            self.artifacts.remove(key)
        self.jobs.append((time.perf_counter() - started, sent))
        return sent


@dataclass(frozen=True)
class _Version:
    """A file as a sync found it: its sha256 when known, else an open file to hash and upload."""

    size: int
    mtime_ns: int
    sha256: str | None
    source: BinaryIO | None


def restore(artifacts: Artifacts, root: Path, index: Index) -> list[str]:
    """Download the indexed files that `root` lacks or holds another version of; the paths fetched."""
    fetched = []
    for name, stored in sorted(index.items()):
        path = Path(root, *PurePosixPath(name).parts)
        if path.is_file() and path.stat().st_size == stored.size and sha256_of(path) == stored.sha256:
            continue
        artifacts.get(stored.key, path)
        if sha256_of(path) != stored.sha256:
            path.unlink(missing_ok=True)
            raise ArtifactStoreError(f"{artifacts.where(stored.key)}: its content is not what the storage "
                                     f"recorded for {name} (sha256 differs); it was not used")
        fetched.append(name)
    return fetched


class TrialUpload(Callback):
    """A study trial's folder kept in the artifact store as its folds train: after each epoch's last.pt (at
    most one upload per file per epoch, only of what changed), in the background while the next epoch
    trains, and as each fold starts (the previous fold's summary, waited for)."""

    stage, writes = RESUME, True  # right after ResumeFile wrote last.pt, before the epoch's row is written

    def __init__(self, mirror: FolderMirror, record: Callable[[Index], None]):
        self.mirror, self.record = mirror, record

    def flush(self) -> None:
        """Sync now, after the one in the background: what the trial's end and a fold's start need."""
        self.mirror.sync(self.record)

    def on_fit_start(self, state: FitState) -> None:
        self.flush()

    def on_epoch_end(self, state: FitState) -> None:
        with state.timed("upload_seconds"):  # what the epoch waits: the previous upload, and opening the files
            self.mirror.sync_in_background(self.record)
