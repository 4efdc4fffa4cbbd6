"""Who published a study's best/ and where its files are: the study's PUBLISHED record in the Optuna storage,
best/ uploaded to the artifact store, and `fetch`, which brings it to any machine."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

import optuna

from ..errors import ConfigError, DetectorError
from ..files import atomic_folder
from ..inference.manifest import read_manifest
from ..layout import ENSEMBLE, StudyPaths
from .artifacts import Artifacts, open_artifacts
from .mirror import FolderMirror, index_from, index_to, restore
from .storage import open_named, recorded_storage, storage_url

PUBLISHER = "publisher"  # study attribute: the worker publishing (or that last published) best/
PUBLISHED = "published"  # study attribute: the plan best/ holds, who published it, and its uploaded files
ARTIFACTS = "artifacts"  # study attribute: the artifact store its first worker gave (--artifacts)


def who(worker: dict[str, Any] | None) -> str:
    if not worker:
        return "another worker"
    return f"the worker on {worker.get('host', '?')} (pid {worker.get('pid', '?')})"


def check_artifacts(study: optuna.Study, artifacts: Artifacts | None) -> None:
    """Every worker of a study started with --artifacts uses it: one without would retry trials from scratch
    and publish where no other machine can fetch. An S3 store must be the same one; a folder store may be
    mounted at another path on each machine."""
    recorded = study.user_attrs.get(ARTIFACTS)
    if recorded is None:
        if artifacts is not None:
            study.set_user_attr(ARTIFACTS, artifacts.url)
        return
    s3 = recorded.startswith("s3://")
    if artifacts is None or (s3 and artifacts.url.rstrip("/") != recorded.rstrip("/")):
        raise ConfigError(f"study {study.study_name} keeps its trials' state and best/ in {recorded}; give every "
                          f"worker --artifacts {recorded if s3 else 'FOLDER (that store, mounted here)'} "
                          f"(or DETECTOR_ARTIFACTS){'' if artifacts is None else f', not {artifacts.url}'}")


def published_elsewhere(study: optuna.Study, directory: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The PUBLISHED record when it holds the plan `key` and this folder's best/ does not: another machine
    published it, and this worker has nothing to do."""
    record = study.user_attrs.get(PUBLISHED)
    if not record or record.get("plan") != key:
        return None
    paths = StudyPaths(directory)
    here = paths.ensemble.exists() and read_manifest(paths.best).trial == key["trial"]
    return None if here else record


def record_published(study: optuna.Study, directory: Path, key: dict[str, Any], worker: dict[str, Any],
                     artifacts: Artifacts | None) -> None:
    """Upload best/ (with artifacts) and record it in the study: what any machine fetches."""
    record = {"plan": key, "by": worker, "at": time.time(), "folder": str(directory.resolve())}
    if artifacts is None:
        study.set_user_attr(PUBLISHED, record)
        return
    previous = study.user_attrs.get(PUBLISHED) or {}
    mirror = FolderMirror(artifacts, StudyPaths(directory).best, f"{directory.name}/best",
                          index_from(previous.get("files")))
    write = lambda index: study.set_user_attr(PUBLISHED, {**record, "artifacts": artifacts.url,
                                                          "files": index_to(index)})
    mirror.sync(write)  # records the files before the versions they replace are removed
    write(mirror.index)  # and the plan and worker, when best/'s files were already there


def fetch(study: str | Path, out: str | Path, *, storage: str | None = None, artifacts: str | None = None,
          force: bool = False, log: Callable[[str], None] = print) -> Path:
    """Bring the best/ a study published into `out` (built whole or not at all): ready for predict, evaluate
    and export. `study` is its name or its folder; `artifacts` defaults to the store it was uploaded to."""
    name, out = Path(study).name, Path(out)
    url = storage or recorded_storage(Path(study))
    if not url:
        raise ConfigError(f"{study}: give the study's storage with --storage (or DETECTOR_STORAGE)")
    record = _published_record(name, storage_url(Path(study), url))
    if not record.get("files"):
        raise ConfigError(f"study {name} was published without --artifacts, into {record.get('folder')} on "
                          f"{(record.get('by') or {}).get('host', '?')}; copy that folder, or run the study again "
                          "with --artifacts to upload it")
    index = index_from(record["files"])
    _claim_out(out, force)
    store = open_artifacts(artifacts or record["artifacts"])
    with atomic_folder(out) as stage:
        restore(store, stage, index)
    size = sum(s.size for s in index.values()) / 1e6
    log(f"fetched best/ of study {name} (trial {record['plan']['trial']}, published by {who(record.get('by'))}): "
        f"{len(index)} files, {size:.1f} MB in {out}")
    return out


def _published_record(name: str, url: str) -> dict[str, Any]:
    record = open_named(name, url).user_attrs.get(PUBLISHED)
    if not record:
        raise ConfigError(f"study {name} has published nothing yet: its workers publish best/ once every trial is "
                          "done; see detector report")
    return record


def _claim_out(out: Path, force: bool) -> None:
    """`out` may be new or empty, or a previous fetch (a best/ folder: replaced with `force`); anything else
    is kept and refused."""
    if not (out.exists() or out.is_symlink()):
        return
    if out.is_symlink() or not out.is_dir():
        raise DetectorError(f"{out}: is {'a link' if out.is_symlink() else 'a file'}; give --out a new folder")
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*"))
    if found and not (out / ENSEMBLE).is_file():
        raise DetectorError(f"{out}: holds files a fetch did not write ({', '.join(found[:5])}); they are kept: "
                            "choose another --out folder")
    if found and not force:
        raise DetectorError(f"{out}: holds a previous fetch; pass --force to replace it, or choose another --out")
