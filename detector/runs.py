"""Run folders: what detector writes in them, when one may be resumed, and what `--force` may delete.

A run folder (of `train`, of `cv`, and each `fold_K/` inside one) carries a marker file, `.detector-run`,
written when detector creates it, which lists the entries detector writes there. Detector only makes run
folders of new or empty folders: a non-empty folder without the marker (a user's own, the current directory,
the dataset's) is refused, never adopted. `--force` deletes only the entries the marker lists and their
temporary files, and never in the current directory, a study folder or a folder that holds the run's
dataset; anything else in the folder stays. Starting a run sweeps only the temporaries of its own entries.
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Any, Iterator

from filelock import FileLock, Timeout

from . import config as config_mod
from .config import Config
from .analysis import audit_files
from . import distributed
from .errors import ConfigError, DetectorError
from .files import read_json, remove_entry, sweep_temp_files, temp_target, write_json
from .layout import LOCK, MARKER, RUN_ENTRIES, RunPaths, StudyPaths, is_top_checkpoint

# Keys that may change between the runs of one folder: budget, place and speed, not what is trained.
RESUMABLE_CHANGES = ("search.n_trials", "search.timeout", "train.device", "train.num_workers", "eval.batch_size",
                     "data.train.annotations", "data.train.images", "data.val.annotations", "data.val.images",
                     "data.test.annotations", "data.test.images")


@contextlib.contextmanager
def hold_run(run: str | Path) -> Iterator[Path]:
    """Lock the run folder for as long as the block runs: a second process on it is refused at once (two
    writers would interleave rows and overwrite each other's checkpoints). The OS frees it if we die."""
    run = Path(run)
    made = [p for p in (run, *run.parents) if not p.exists()]  # the folders a refused start must not leave
    run.mkdir(parents=True, exist_ok=True)
    path = RunPaths(run).lock
    created = not path.exists()
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ConfigError(f"{run}: another detector process is running in this folder; wait for it to finish, "
                          "or use another output folder") from None
    try:
        yield run
    finally:
        lock.release()
        if created and not RunPaths(run).marker.exists():  # refused before it became a run: leave no trace
            path.unlink(missing_ok=True)
            for folder in made:
                if folder.is_dir() and not any(folder.iterdir()):
                    folder.rmdir()


@contextlib.contextmanager
def owned_run(run: str | Path, cfg: Config, *, force: bool = False, log=print) -> Iterator[Path]:
    """hold_run + prepare_run for the block. Under torchrun only rank 0 owns the folder; the other ranks
    wait for its answer and raise the same error when it refuses."""
    w = distributed.world()
    with contextlib.ExitStack() as held:
        error = None
        if w.main:
            try:
                held.enter_context(hold_run(run))
                prepare_run(run, cfg, force=force, log=log)
            except DetectorError as e:
                error = e
        error = distributed.broadcast(w, error)
        if error is not None:
            raise error
        yield Path(run)


def prepare_run(run: str | Path, cfg: Config, *, force: bool = False, log=print) -> Path:
    """Make `run` ready to start or resume a run of `cfg`, and record the config in it.

    An existing run of another config is refused with the keys that differ (RESUMABLE_CHANGES may change);
    with `force` it is cleared first (clear_run). Temporary files of a killed writer are swept.
    """
    run = Path(run)
    _refuse_foreign(run)
    differences = config_differences(run, cfg)
    if differences and not force:
        raise ConfigError(f"{run} was started with another config and cannot be resumed: "
                          f"{describe_differences(differences)}; use another output folder, or --force to start it "
                          "over")
    if differences:
        clear_run(run, cfg)
        log(f"{run}: started over (--force)")
    _check_data(run, cfg, force)
    run.mkdir(parents=True, exist_ok=True)
    swept = sweep_run_temp_files(run)
    if swept:
        log(f"{run}: removed {swept} temporary file(s) left by an interrupted write")
    paths = RunPaths(run)
    # a marked folder was empty when detector marked it, so every entry name it may write is its own
    write_json(paths.marker, {"created_by": "detector", "entries": sorted({*marked_entries(run), *RUN_ENTRIES})})
    config_mod.save(config_mod.resolve_paths(cfg), paths.config)
    write_json(paths.data, data_fingerprint(cfg))
    return run


def _refuse_foreign(run: Path) -> None:
    if not run.is_dir() or RunPaths(run).marker.exists():
        return
    found = sorted(p.name for p in run.iterdir() if p.name != LOCK)
    if found:
        shown = ", ".join(found[:3]) + (", ..." if len(found) > 3 else "")
        raise ConfigError(f"{run}: not a detector run folder (no {MARKER}) and not empty ({shown}); detector "
                          "never adopts a folder it did not make: use a new or empty --out")


def marked_entries(run: Path) -> list[str]:
    """The entry names the run folder's marker lists (RUN_ENTRIES for a marker from before the list)."""
    marker = RunPaths(run).marker
    if not marker.exists():
        return []
    return list(read_json(marker).get("entries", RUN_ENTRIES))


def sweep_run_temp_files(run: Path) -> int:
    """Remove the temporaries of a killed write of the run's own entries: in the run folder, its top/, and
    (recursively) its marked fold and refit member folders."""
    entries = {*marked_entries(run), *RUN_ENTRIES}
    removed = sweep_temp_files(run, entries.__contains__) + sweep_temp_files(RunPaths(run).top, is_top_checkpoint)
    for child in _run_children(run):
        removed += sweep_run_temp_files(child)
    return removed


def _run_children(run: Path) -> list[Path]:
    paths = RunPaths(run)
    children = [f.root for _, f in paths.fold_runs()]
    children += sorted(p for p in paths.refit.iterdir() if p.is_dir()) if paths.refit.is_dir() else []
    return [c for c in children if RunPaths(c).marker.exists()]


def data_fingerprint(cfg: Config, splits: tuple[str, ...] = ("train", "val")) -> dict[str, str]:
    """sha256 of each annotation file of `splits` (a run trains and validates; a study also tests)."""
    out = {}
    for name in splits:
        split = getattr(cfg.data, name)
        path = Path(split.annotations)
        if path.is_file():
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _check_data(run: Path, cfg: Config, force: bool) -> None:
    """A run resumed on annotation files whose content changed would mix two datasets in one run."""
    data = RunPaths(run).data
    recorded = read_json(data) if data.exists() else {}
    changed = [k for k, v in data_fingerprint(cfg).items() if k in recorded and recorded[k] != v]
    if changed and not force:
        raise ConfigError(f"{run}: the {' and '.join(f'data.{k}' for k in changed)} annotations changed since "
                          "this run started (same path, other content); use another output folder, or --force "
                          "to start it over")
    if changed:
        clear_run(run, cfg)


def config_differences(run: Path, cfg: Config) -> dict[str, tuple[Any, Any]]:
    """Keys whose values differ between the run's saved config and `cfg`, ignoring RESUMABLE_CHANGES."""
    saved = RunPaths(run).config
    return resume_differences(config_mod.load(saved), config_mod.resolve_paths(cfg)) if saved.exists() else {}


def resume_differences(saved: Config, current: Config) -> dict[str, tuple[Any, Any]]:
    """The keys that keep a run or a study of `saved` from resuming as `current` (RESUMABLE_CHANGES may
    differ)."""
    return {k: v for k, v in config_mod.diff(saved, current).items() if k not in RESUMABLE_CHANGES}


def describe_differences(differences: dict[str, tuple[Any, Any]]) -> str:
    """`key (old -> new), ...`, and what may change instead: the one wording of a refused resume."""
    listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in differences.items())
    return f"{listed} (these may change on a resume: {', '.join(RESUMABLE_CHANGES)})"


def clear_run(run: Path, cfg: Config) -> None:
    """Delete what detector wrote in `run` (recursively into its fold folders), after the safety checks."""
    here = run.resolve()
    if here == Path.cwd().resolve() or here in Path.cwd().resolve().parents:
        raise ConfigError(f"{run}: --force would clear the current directory (or one holding it); "
                          "pass a run folder of its own as --out")
    if StudyPaths(run).meta.exists():
        raise ConfigError(f"{run}: is a study folder; --force never clears a study (delete it yourself, or "
                          "use another --out)")
    if not RunPaths(run).marker.exists():
        raise ConfigError(f"{run}: was not created by detector (no {MARKER}), so --force will not clear it; "
                          "use another --out, or delete the folder yourself")
    for path in _dataset_paths(cfg):
        if path == here or here in path.parents:
            raise ConfigError(f"{run}: holds the run's dataset ({path}); --force will not clear it; "
                              "use another --out")
    _remove_entries(run)


def _remove_entries(folder: Path) -> None:
    folds = {f.root for _, f in RunPaths(folder).fold_runs() if f.marker.exists()}
    entries = set(marked_entries(folder))
    if audit_files.edited(folder):  # the user's review of audit-labels' fixes is theirs, not the run's
        entries.discard(RunPaths(folder).label_fixes.name)
    for child in folder.iterdir():
        if child in folds:
            _remove_entries(child)
            _rmdir_if_empty(child)
        elif child.name in entries or temp_target(child) in entries:
            remove_entry(child)


def _rmdir_if_empty(folder: Path) -> None:
    if not any(folder.iterdir()):
        folder.rmdir()


def _dataset_paths(cfg: Config) -> list[Path]:
    out = []
    for split in (cfg.data.train, cfg.data.val):
        if split.annotations:
            out += [Path(split.annotations).resolve(), split.images_dir.resolve()]
    return out
