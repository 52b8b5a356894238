"""A real PostgreSQL for tests (a pytest plugin: `pytest_plugins = ["postgres"]`).

`postgres_server` is `VOXGATE_TEST_POSTGRES_URL` when set; otherwise a throwaway cluster made
with Debian's binaries (`/usr/lib/postgresql/<version>/bin`), in a temporary folder, listening
only on a Unix socket there (no TCP port), stopped and removed at the end of the session.
PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user.
Missing binaries fail the tests with the command to install them; they never skip.
`postgres_database` is a fresh, empty database of that server for one test.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

URL_VARIABLE = "VOXGATE_TEST_POSTGRES_URL"
DEBIAN_BINARIES = Path("/usr/lib/postgresql")


def _binaries() -> Path:
    """The newest installed version's bin folder (initdb, pg_ctl)."""
    found = sorted(
        DEBIAN_BINARIES.glob("*/bin/initdb"), key=lambda p: int(p.parts[-3].split(".")[0])
    )
    if not found:
        pytest.fail(
            f"PostgreSQL is not installed (no {DEBIAN_BINARIES}/*/bin/initdb): run "
            f"`apt-get install postgresql` (deploy/install.sh --test does), or set {URL_VARIABLE}"
        )
    return found[-1].parent


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A URL of a PostgreSQL server whose user may create databases."""
    if url := os.environ.get(URL_VARIABLE):
        yield url
        return
    binaries = _binaries()
    # A short path: a Unix socket's path is limited to about 100 characters.
    root = Path(tempfile.mkdtemp(prefix="voxgate-pg-"))
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    if as_postgres:
        shutil.chown(root, "postgres", "postgres")
    data, log = root / "data", root / "server.log"

    def run(*command: str | Path) -> None:
        subprocess.run([*as_postgres, *map(str, command)], check=True, capture_output=True)

    try:
        run(binaries / "initdb", "-D", data, "-U", "voxgate", "--auth=trust", "--no-sync")
        options = f"-c listen_addresses='' -k {root} -c fsync=off -c full_page_writes=off"
        run(binaries / "pg_ctl", "-D", data, "-l", log, "-o", options, "-w", "start")
    except subprocess.CalledProcessError as e:
        shown = log.read_text() if log.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {e.stderr.decode()}{shown}")
    try:
        yield f"postgresql://voxgate@/postgres?host={root}"
    finally:
        run(binaries / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop")
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: str) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    # The server's URL with the new database in its path (the query, ?host=..., stays).
    base, _, query = postgres_server.partition("?")
    yield f"{base.rsplit('/', 1)[0]}/{name}" + (f"?{query}" if query else "")
    with psycopg.connect(postgres_server, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(name)))
