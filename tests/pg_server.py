"""A throwaway PostgreSQL server in a temp folder on a free local port (tests and bench).

Uses Debian's server binaries (package `postgresql`); as root the server runs as the
`postgres` user, since initdb refuses to run as root.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


def server_binaries() -> str | None:
    """The folder holding initdb and pg_ctl, or None when PostgreSQL is not installed."""
    found = shutil.which("initdb")
    if found and shutil.which("pg_ctl"):
        return os.path.dirname(os.path.realpath(found))
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return os.path.dirname(candidates[-1]) if candidates else None


def missing_reason() -> str | None:
    """Why a PostgreSQL test cannot run here, or None when it can."""
    if server_binaries() is None:
        return ("PostgreSQL server binaries (initdb, pg_ctl) not installed: "
                "apt-get install postgresql")
    try:
        import psycopg  # noqa: F401  (SQLAlchemy's default PostgreSQL driver)
    except ImportError:
        return "psycopg not installed: pip install 'comp[postgres]'"
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        return "running as root without runuser to start the server as another user"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def postgres_server() -> Iterator[str]:
    """Start a server, yield its SQLAlchemy URL, stop it and delete its folder."""
    bin_dir = server_binaries()
    folder = tempfile.mkdtemp(prefix="comp-pg-")
    prefix: list[str] = []
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = os.path.join(folder, "data"), _free_port()
    subprocess.run([*prefix, f"{bin_dir}/initdb", "-D", data, "-U", "comp", "--auth=trust",
                    "-E", "UTF8"], check=True, capture_output=True)
    options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c max_connections=100"
    subprocess.run([*prefix, f"{bin_dir}/pg_ctl", "-D", data, "-o", options, "-l",
                    os.path.join(folder, "log"), "-w", "start"], check=True,
                   capture_output=True)
    try:
        yield f"postgresql://comp@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*prefix, f"{bin_dir}/pg_ctl", "-D", data, "-m", "immediate", "stop"],
                       capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
