"""A folder's copy in the artifact store, kept as the folder changes: each sync uploads the files whose
content changed (an object per version, named by its sha256), returns the new index for the caller to record
in the Optuna storage, and only then removes the versions it replaced, so the recorded index always names
objects that exist. `restore` brings a recorded folder back on any machine."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable

from ..errors import ArtifactStoreError
from ..files import temp_target
from ..layout import LOCK
from ..training.callbacks import RESUME, Callback, FitState
from .artifacts import Artifacts, sha256_of

SKIPPED = {LOCK, ".lock", ".publish.lock"}  # held by the process that writes the folder, never copied


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
    """Uploads what changed in `root` since the last sync, under the key prefix `base`."""

    def __init__(self, artifacts: Artifacts, root: Path, base: str, index: Index | None = None):
        self.artifacts, self.root, self.base = artifacts, Path(root), base
        self.index: Index = dict(index or {})
        self.hashes: dict[str, tuple[int, int, str]] = {}  # path -> (size, mtime_ns, sha256) seen here
        self.uploaded_bytes = 0

    def files(self) -> dict[str, Path]:
        if not self.root.is_dir():
            return {}
        return {p.relative_to(self.root).as_posix(): p for p in sorted(self.root.rglob("*"))
                if p.is_file() and not p.is_symlink() and p.name not in SKIPPED and temp_target(p) is None}

    def sync(self, record: Callable[[Index], None]) -> int:
        """Upload the changed files, `record` the new index, remove the replaced versions; the bytes sent."""
        sent, index = 0, {}
        for name, path in self.files().items():
            stat = path.stat()
            seen = self.hashes.get(name)
            sha = seen[2] if seen and seen[:2] == (stat.st_size, stat.st_mtime_ns) else sha256_of(path)
            self.hashes[name] = (stat.st_size, stat.st_mtime_ns, sha)
            old = self.index.get(name)
            if old is not None and old.sha256 == sha:
                index[name] = old
                continue
            key = self.artifacts.key(self.base, f"{name}@{sha[:16]}")
            self.artifacts.put(path, key)
            index[name], sent = Stored(key, sha, stat.st_size), sent + stat.st_size
        if index == self.index:
            return 0
        record(index)
        replaced = {s.key for s in self.index.values()} - {s.key for s in index.values()}
        self.index = index
        for key in sorted(replaced):
            self.artifacts.remove(key)
        self.uploaded_bytes += sent
        return sent


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
    most one upload per file per epoch, only of what changed) and as each fold starts (the previous fold's
    summary). `seconds` and `sent` per epoch are what bench/artifacts.py reports."""

    stage, writes = RESUME, True  # right after ResumeFile wrote last.pt, before the epoch's row is written

    def __init__(self, mirror: FolderMirror, record: Callable[[Index], None]):
        self.mirror, self.record = mirror, record
        self.epochs: list[tuple[float, int]] = []  # (seconds, bytes) per epoch

    def on_fit_start(self, state: FitState) -> None:
        self.mirror.sync(self.record)

    def on_epoch_end(self, state: FitState) -> None:
        with state.timed("upload_seconds"):
            sent = self.mirror.sync(self.record)
        self.epochs.append((state.row["upload_seconds"], sent))
