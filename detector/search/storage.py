"""Where a study lives: its storage URL (study.json, --storage, or SQLite in the folder), opened with the
study's sampler and pruner; storage errors become one ConfigError that never shows a password."""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any, Iterator

import optuna

from ..config import SearchConfig
from ..errors import ConfigError, hide_password
from ..files import read_json, write_json
from ..layout import StudyPaths


def load_study(study_dir: str | Path, storage: str | None = None) -> optuna.Study:
    """Open an existing study folder for reading."""
    directory = Path(study_dir)
    if not StudyPaths(directory).meta.exists():
        raise ConfigError(f"{directory}: not a study folder (no study.json); studies are made by `detector study`")
    url = storage_url(directory, storage)
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        raise ConfigError(f"storage {url}: no such database file; check --storage (the study folder records "
                          f"{recorded_storage(directory) or 'the default study.db'})")
    return open_named(directory.name, url)


def open_named(name: str, url: str) -> optuna.Study:
    """The study `name` in the storage at `url`, for reading; a missing one is a ConfigError."""
    with storage_errors(url):
        try:
            return optuna.load_study(study_name=name, storage=url)
        except KeyError:
            raise ConfigError(f"storage {_masked(url)} holds no study named {name!r}; check the name and "
                              "--storage") from None


def storage_url(directory: Path, given: str | None) -> str:
    """The storage a study uses: --storage, else the URL study.json records, else SQLite in the folder."""
    url = given or recorded_storage(directory) or f"sqlite:///{StudyPaths(directory).database.resolve()}"
    _masked(url)  # a malformed URL fails here, without echoing its password
    if "***" in url:
        raise ConfigError(f"{directory}: the study's storage {url} needs its password; pass --storage URL")
    return url


def recorded_storage(directory: Path) -> str | None:
    meta = StudyPaths(directory).meta
    return read_json(meta).get("storage") if meta.exists() else None


def record_storage(directory: Path, url: str) -> None:
    """study.json names the storage (password masked); written only once the storage has opened."""
    if recorded_storage(directory) != _masked(url):
        write_json(StudyPaths(directory).meta, {"name": directory.name, "storage": _masked(url)})


def _masked(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        raise ConfigError(f"--storage {hide_password(url)!r} is not a database URL; use e.g. "
                          "postgresql://user:password@host:5432/db or sqlite:///path/study.db") from None


@contextlib.contextmanager
def storage_errors(url: str) -> Iterator[None]:
    """A storage that cannot be reached, refuses the login or lacks its driver: one ConfigError."""
    import sqlalchemy.exc

    try:
        yield
    except ImportError as e:
        raise ConfigError(f"storage {_masked(url)}: a database driver is missing ({e}); "
                          "for PostgreSQL: pip install 'psycopg[binary]'") from None
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError, sqlalchemy.exc.ArgumentError) as e:
        first = str(getattr(e, "orig", None) or e).strip().splitlines()[0]
        raise ConfigError(f"storage {_masked(url)}: cannot connect ({first}); check the host, port, user, "
                          "password and database name") from None


def open_study(directory: Path, url: str, search: SearchConfig) -> tuple[optuna.Study, Any]:
    engine_kwargs = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    with storage_errors(url), warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        rdb = optuna.storages.RDBStorage(
            url, engine_kwargs=engine_kwargs, heartbeat_interval=search.heartbeat_seconds,
            grace_period=search.grace_seconds,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(
                max_retry=search.max_retries, inherit_intermediate_values=True))
    directions = ["maximize", "minimize"] if "latency" in search.objectives else ["maximize"]
    study = optuna.create_study(study_name=directory.name, storage=rdb, directions=directions,
                                load_if_exists=True, sampler=make_sampler(search, search.seed), pruner=_pruner(search))
    return study, rdb


def make_sampler(search: SearchConfig, seed: int) -> optuna.samplers.BaseSampler:
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(search: SearchConfig) -> optuna.pruners.BasePruner:
    if search.pruner == "none":
        return optuna.pruners.NopPruner()
    if search.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1)
    if search.pruner == "threshold":
        return optuna.pruners.ThresholdPruner(lower=search.prune_below, n_warmup_steps=search.warmup_epochs)
    return optuna.pruners.MedianPruner(n_startup_trials=search.startup_trials, n_warmup_steps=search.warmup_epochs)
