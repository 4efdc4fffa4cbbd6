"""A study's artifact store beside its storage: an S3 bucket (`s3://bucket/prefix`, through Optuna's
Boto3ArtifactStore; endpoint, keys and region from the usual AWS environment variables) or a folder
(FileSystemArtifactStore). Objects are named by the study, the folder and the file they hold a version of,
so a trial retried on another machine finds them. Every call is retried; what still fails is one
ArtifactStoreError that names the object and never a credential."""
from __future__ import annotations

import hashlib
import io
import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Callable
from urllib.parse import urlparse

from ..errors import ArtifactStoreError, ConfigError, DetectorError, hide_password
from ..files import atomic_file

ENV = "DETECTOR_ARTIFACTS"
ATTEMPTS = 3  # each call; botocore retries inside each attempt too
FIRST_WAIT = 1.0  # seconds before the second attempt, doubled after each


@dataclass(frozen=True)
class Artifacts:
    """Where a study's files go: `store` (an optuna.artifacts store), and the key prefix inside it."""

    url: str
    store: Any
    prefix: str
    wait: float = FIRST_WAIT

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, *parts) if p.strip("/"))

    def put(self, source: BinaryIO, key: str, name: str) -> None:
        """Upload `source` (an open file, read from its start on every attempt) as `key`; `name` says what
        it is in a message."""
        def write() -> None:
            source.seek(0)
            self.store.write(key, source)
        self._retried(f"uploading {name} to {self.where(key)}", write)

    def get(self, key: str, path: Path) -> None:
        """Download `key` into `path` (written whole or not at all)."""
        def read() -> None:
            with atomic_file(path) as out:
                reader = self.store.open_reader(key)
                try:
                    shutil.copyfileobj(reader, out)
                finally:
                    reader.close()
        self._retried(f"downloading {self.where(key)} to {path}", read)

    def remove(self, key: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        def remove() -> None:
            try:
                self.store.remove(key)
            except ArtifactNotFound:
                pass
        self._retried(f"removing {self.where(key)}", remove)

    def where(self, key: str) -> str:
        """The object as a user finds it: s3://BUCKET/KEY, or its file below the store's folder."""
        return f"s3://{_bucket(self.url)}/{key}" if self.url.startswith("s3://") else str(Path(self.url) / key)

    def _retried(self, what: str, call: Callable[[], None]) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        wait = self.wait
        for attempt in range(1, ATTEMPTS + 1):
            try:
                return call()
            except ArtifactNotFound:  # no retry brings it back
                raise ArtifactStoreError(f"{what}: the object is missing from the store") from None
            except DetectorError:  # this machine's disk (files.atomic_file's StorageError), not the store
                raise
            except Exception as e:  # OSError, botocore's errors, whatever their class
                error = e
            if attempt < ATTEMPTS:
                time.sleep(wait)
                wait *= 2
        raise ArtifactStoreError(f"{what} failed {ATTEMPTS} times ({_reason(error)}); check that the artifact "
                                 f"store {self.url} is reachable and writable") from None


def open_artifacts(url: str, wait: float = FIRST_WAIT) -> Artifacts:
    """The store at `url`, checked before any trial runs: it exists, and an object can be written, read back
    and removed (one ConfigError otherwise, naming what to fix)."""
    if url.startswith("s3://"):
        artifacts = Artifacts(url, _s3_store(url), urlparse(url).path.strip("/"), wait)
    elif "://" in url and not url.startswith("file://"):
        raise ConfigError(f"--artifacts {hide_password(url)}: use s3://BUCKET/PREFIX or a folder")
    else:
        folder = Path(url[len("file://"):] if url.startswith("file://") else url).expanduser().resolve()
        artifacts = Artifacts(str(folder), _folder_store(folder), "", wait)
    _probe(artifacts)
    return artifacts


def _bucket(url: str) -> str:
    return urlparse(url).netloc


def _s3_store(url: str):
    if "@" in urlparse(url).netloc:
        raise ConfigError(f"--artifacts {hide_password(url)}: keys do not go in the URL; set AWS_ACCESS_KEY_ID and "
                          "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for a server other than AWS)")
    if not _bucket(url):
        raise ConfigError(f"--artifacts {url}: no bucket; use s3://BUCKET/PREFIX")
    try:
        import boto3
        from botocore.config import Config as BotoConfig
    except ImportError:
        raise ConfigError("--artifacts s3://... needs boto3: pip install 'detector[s3]'") from None
    from optuna.artifacts import Boto3ArtifactStore

    client = boto3.client("s3", config=BotoConfig(connect_timeout=10, read_timeout=120,
                                                  retries={"max_attempts": 3, "mode": "standard"}))
    return Boto3ArtifactStore(_bucket(url), client=client)


def _folder_store(folder: Path):
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"--artifacts {folder}: cannot make the folder ({_reason(e)}); choose a writable "
                          "folder or s3://BUCKET/PREFIX") from None
    return _NestedFolderStore(folder)


class _NestedFolderStore:
    """FileSystemArtifactStore for keys with folders in them: makes a key's parent folders, and writes each
    object whole or not at all (a kill mid-write leaves the previous version)."""

    def __init__(self, folder: Path):
        from optuna.artifacts import FileSystemArtifactStore

        self.inner = FileSystemArtifactStore(folder)

    def open_reader(self, key: str):
        return self.inner.open_reader(key)

    def write(self, key: str, body) -> None:
        path = self.inner._get_filepath(key)  # its check that the key stays inside the folder
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(path) as out:
            shutil.copyfileobj(body, out)

    def remove(self, key: str) -> None:
        self.inner.remove(key)


def _probe(artifacts: Artifacts) -> None:
    key = artifacts.key(".detector-probe", uuid.uuid4().hex)
    body = b"detector: can this store be written?"
    try:
        if artifacts.url.startswith("s3://"):  # first: some servers make a missing bucket on the first write
            artifacts.store.client.head_bucket(Bucket=artifacts.store.bucket)
        artifacts.store.write(key, io.BytesIO(body))
        reader = artifacts.store.open_reader(key)
        try:
            read = reader.read()
        finally:
            reader.close()
        artifacts.store.remove(key)
    except Exception as e:
        raise ConfigError(f"--artifacts {artifacts.url}: {_reason(e)}; {_fix(e)}") from None
    if read != body:
        raise ConfigError(f"--artifacts {artifacts.url}: an object written there read back changed")


def _reason(e: BaseException) -> str:
    """What went wrong, without the request's headers or signature (botocore's messages hold neither)."""
    response = getattr(e, "response", None)
    if isinstance(response, dict) and "Error" in response:
        error = response["Error"]
        return f"{error.get('Code', '?')}: {error.get('Message', '')}".rstrip(": ")
    if isinstance(e, OSError) and e.strerror:
        return f"{e.strerror}: {e.filename}" if e.filename else e.strerror
    return f"{type(e).__name__}: {e}"


def _fix(e: BaseException) -> str:
    code = str((getattr(e, "response", None) or {}).get("Error", {}).get("Code", ""))
    name = type(e).__name__
    if code in ("404", "NoSuchBucket"):
        return "the bucket does not exist: create it (aws s3 mb s3://BUCKET) or fix the name"
    if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
        return "access denied: check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and the bucket's policy"
    if name == "NoCredentialsError":
        return "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (or an AWS profile)"
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or "AWS"
        return f"the S3 endpoint ({endpoint}) cannot be reached: check AWS_ENDPOINT_URL and the network"
    if isinstance(e, OSError):
        return "choose a folder this user can write"
    return "check the store's URL, endpoint and keys"


def sha256_of(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
