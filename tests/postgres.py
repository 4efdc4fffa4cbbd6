"""A throwaway PostgreSQL server on localhost for tests (run as the `postgres` user when we are root)."""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator


def find_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server with a database `detector` and yield its URL; stop it and delete its files after."""
    initdb, pg_ctl = find_bin("initdb"), find_bin("pg_ctl")
    if not (initdb and pg_ctl):
        raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; install postgresql "
                           "(.ci/run does: apt-get install postgresql)")
    root = Path(tempfile.mkdtemp(prefix="detector-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # postgres refuses to run as root
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    data = root / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], check=True, capture_output=True, text=True)
    try:
        run(initdb, "-D", str(data), "-U", "detector", "-A", "trust", "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(root / "log"), "-w", "-t", "60", "start", "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50")
        run(find_bin("createdb") or "createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "detector", "detector")
        yield f"postgresql://detector@127.0.0.1:{port}/detector"
    finally:
        with contextlib.suppress(Exception):
            run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(root, ignore_errors=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
