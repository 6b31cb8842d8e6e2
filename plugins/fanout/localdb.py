"""The local stack's metadata database: a private PostgreSQL cluster per Airflow home.

SQLite serialises every write: a burst of triggers on the local stack got HTTP 500 "Database
error" (database is locked), and the scheduler, the api-server and the dag-processor queue on
one file lock. The local stack therefore runs PostgreSQL, as a deployment does: its own cluster
(``initdb``) under the Airflow home, on a free loopback port, with a generated password (no
default password), started and supervised as one more component of the stack. ``sqlite`` stays
available (``FANOUT_LOCAL_DATABASE=sqlite``) for machines without PostgreSQL.

PostgreSQL refuses to run as root; as root the cluster runs as the ``postgres`` system user,
and lives where that user can reach it (``/tmp/fanout-postgres/<home hash>`` when the home's
directories are private), linked from the home.

``python -m fanout.localdb install`` makes sure the server is installed (``apt-get install
postgresql`` as root on Debian/Ubuntu; otherwise it says what to run); ``make up``, ``make demo``,
``make test`` and ``make bench`` call it, so CI needs no step of its own.
"""

from __future__ import annotations

import argparse
import getpass
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

DATABASE = "airflow"
ROLE = "airflow"
INSTALL_HINT = "sudo apt-get install -y postgresql  (or run with FANOUT_LOCAL_DATABASE=sqlite)"


class PostgresError(RuntimeError):
    """PostgreSQL is missing, or the local cluster could not be created or started."""


def bindir() -> Path | None:
    """The directory of ``initdb`` and ``postgres``: Debian's newest, or the one on PATH."""
    versions = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/postgres"),
        key=lambda p: [int(x) for x in re.findall(r"\d+", p)],
    )
    if versions:
        return Path(versions[-1]).parent
    found = shutil.which("postgres") or shutil.which("initdb")
    return Path(found).parent if found else None


def install() -> Path:
    """Install the PostgreSQL server if it is missing (root with apt); return its bindir."""
    found = bindir()
    if found:
        return found
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise PostgresError(f"PostgreSQL is not installed; install it with: {INSTALL_HINT}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    command = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    if subprocess.run(command, env=env, check=False).returncode:
        subprocess.run(["apt-get", "update"], env=env, check=True)
        subprocess.run(command, env=env, check=True)
    found = bindir()
    if not found:
        raise PostgresError("apt-get installed postgresql but no postgres binary was found")
    return found


def _server_user() -> str | None:
    """The user the server runs as: ourselves, or ``postgres`` when we are root."""
    return "postgres" if os.geteuid() == 0 else None


def _reachable_by(user: str, path: Path) -> bool:
    """Whether ``user`` (not in our groups) can traverse every directory above ``path`` (absolute,
    symbolic links not followed: the link ``home/postgres`` must not vouch for its home)."""
    import pwd

    uid = pwd.getpwnam(user).pw_uid
    for parent in path.parents:
        st = parent.stat()
        if st.st_uid != uid and not st.st_mode & 0o001:
            return False
    return True


def data_dir_for(home: Path) -> Path:
    """Where the cluster of ``home`` lives: ``home/postgres``, unless the server user cannot reach it."""
    wanted = Path(home).resolve() / "postgres"
    user = _server_user()
    if user is None or _reachable_by(user, wanted):
        return wanted
    shared = Path(tempfile.gettempdir()) / "fanout-postgres"
    shared.mkdir(mode=0o711, exist_ok=True)
    shared.chmod(0o711)  # traversable, not listable
    return shared / hashlib.sha256(str(wanted).encode()).hexdigest()[:16]


@dataclass
class LocalPostgres:
    """One private cluster: ``init()`` once, ``command()`` to run it, ``uri`` to reach it."""

    datadir: Path
    port: int
    password: str

    def __post_init__(self) -> None:
        found = bindir()
        if not found:
            raise PostgresError(f"PostgreSQL is not installed; install it with: {INSTALL_HINT}")
        self.bin = found
        self.user = _server_user()

    @property
    def uri(self) -> str:
        return f"postgresql+psycopg2://{ROLE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def init(self) -> None:
        """Create the cluster if it does not exist: UTF8 (SQL_ASCII breaks non-ASCII DAG text)."""
        if (self.datadir / "PG_VERSION").exists():
            return
        if self.datadir.exists():
            shutil.rmtree(self.datadir)  # a cluster whose initdb was cut short
        self.datadir.mkdir(parents=True, mode=0o700)
        pwfile = self.datadir.parent / f".{self.datadir.name}.pw"  # initdb wants an empty directory
        pwfile.touch(mode=0o600)
        pwfile.write_text(self.password + "\n")
        self._chown(self.datadir, pwfile)
        try:
            done = subprocess.run(
                [
                    str(self.bin / "initdb"),
                    "-D",
                    str(self.datadir),
                    "-U",
                    ROLE,
                    f"--pwfile={pwfile}",
                    "--auth=scram-sha-256",
                    "--encoding=UTF8",
                    "--locale=C",
                    "--no-sync",
                ],
                capture_output=True,
                text=True,
                check=False,
                user=self.user,
                group=self.user,
                extra_groups=[] if self.user else None,
                cwd="/",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        if done.returncode:
            shutil.rmtree(self.datadir, ignore_errors=True)
            raise PostgresError(f"initdb failed (exit {done.returncode}): {done.stderr[-1500:]}")

    def _chown(self, *paths: Path) -> None:
        if self.user:
            for path in paths:
                shutil.chown(path, self.user, self.user)

    def command(self) -> list[str]:
        """The server in the foreground (a supervised component), on loopback only."""
        return [
            str(self.bin / "postgres"),
            "-D",
            str(self.datadir),
            "-p",
            str(self.port),
            "-c",
            "listen_addresses=127.0.0.1",
            "-c",
            f"unix_socket_directories={self.datadir}",
            "-c",
            "max_connections=200",
            # Airflow's state is rebuilt by re-running tasks; losing the last commits on a power
            # cut is acceptable locally, waiting for fsync on every state change is not.
            "-c",
            "synchronous_commit=off",
        ]

    def wait_ready(self, timeout: float = 60, alive=lambda: True) -> None:
        """Wait until the server accepts connections, then create the database if missing."""
        import psycopg2

        deadline = time.monotonic() + timeout
        while True:
            try:
                conn = psycopg2.connect(
                    host="127.0.0.1", port=self.port, user=ROLE, password=self.password, dbname="postgres"
                )
                break
            except psycopg2.OperationalError as err:
                if not alive():
                    raise PostgresError(f"PostgreSQL exited while starting: {err}") from None
                if time.monotonic() > deadline:
                    raise PostgresError(
                        f"PostgreSQL did not accept connections within {timeout}s: {err}"
                    ) from None
                time.sleep(0.2)
        try:
            conn.autocommit = True
            with conn.cursor() as cur:
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,))
                if cur.fetchone() is None:
                    cur.execute(f"CREATE DATABASE \"{DATABASE}\" ENCODING 'UTF8' TEMPLATE template0")
        finally:
            conn.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fanout.localdb", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="install the PostgreSQL server if missing (apt-get, as root)")
    args = parser.parse_args(argv)
    if args.command == "install":
        if os.environ.get("FANOUT_LOCAL_DATABASE", "").strip().lower() == "sqlite":
            print("FANOUT_LOCAL_DATABASE=sqlite: PostgreSQL not needed")
            return 0
        try:
            found = install()
        except (PostgresError, subprocess.CalledProcessError) as err:
            print(f"fanout: {err}", file=sys.stderr)
            return 1
        print(f"PostgreSQL server: {found} (runs as {_server_user() or getpass.getuser()})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
