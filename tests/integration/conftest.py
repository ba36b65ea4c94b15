"""Fixtures shared by the integration tests: a real PostgreSQL server (started once per test session) and a
feedback-store URL for each backend."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres():
    """A PostgreSQL server on a free loopback port, run as the postgres user when the tests run as root (the server
    refuses root); yields a URL factory giving a fresh database per call."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine: the PostgreSQL store tests "
                    "need Debian's postgresql (scripts/setup.sh installs it when run as root)")
    import psycopg

    # not under pytest's tmp folder: that is private to root, and the server runs as postgres
    root = Path(tempfile.mkdtemp(prefix="posttrain-pg-"))
    data, sockets = root / "data", root / "sock"
    sockets.mkdir()
    as_user: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sockets, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    subprocess.run(as_user + [initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"], check=True,
                   capture_output=True, env=env)
    subprocess.run(as_user + [pg_ctl, "-D", str(data), "-l", str(root / "server.log"), "-w", "-t", "60", "-o",
                              f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=on", "start"],
                   check=True, capture_output=True, env=env)
    base = f"postgresql://postgres@127.0.0.1:{port}"

    def new_database() -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"{base}/{name}"

    try:
        yield new_database
    finally:
        subprocess.run(as_user + [pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    if request.param == "sqlite":
        return str(tmp_path / "feedback.db")
    return request.getfixturevalue("postgres")()
