"""Base backups, the WAL archive and point-in-time restore of the platform's PostgreSQL cluster.

One cluster holds the market data, Dagster's and Superset's databases: a base backup and its WAL cover
all three, and a restore brings them back to the same instant together. ``pg_basebackup`` runs as the
server's account (``cryptopg`` when the stack runs as root), so the server can read its backups back.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import unquote, urlsplit

import psycopg2

from crypto_platform.settings import PlatformSettings
from local_stack.backup_plan import (
    SEGMENT,
    ArchiverState,
    BaseBackup,
    backup_stamp,
    backups_to_delete,
    recovery_fatal,
    recovery_settings,
    start_segment,
    wal_to_delete,
)
from local_stack.postgres import PostgresServer, ServerAccount, pg_bin_dir, prepare_backup_dir
from local_stack.processes import StackError, tail, wait_until

RECOVERY_TIMEOUT_S = 3600
# A recovery that stopped early: the postmaster shuts down right after its startup process's FATAL line.
FAILED_RECOVERY_EXIT_S = 30
RECOVERY_CONF = "recovery_target.conf"
log = logging.getLogger(__name__)


class BackupStore:
    """``BACKUP_DIR``: base backups in ``base/``, the WAL archive in ``wal/``."""

    def __init__(self, settings: PlatformSettings) -> None:
        self.settings = settings
        self.root = settings.backup_dir
        self.base_dir = self.root / "base"
        self.wal_dir = self.root / "wal"

    def backups(self) -> list[BaseBackup]:
        """The finished base backups (a folder whose backup.json was written), oldest first."""
        found = []
        for record in sorted(self.base_dir.glob("*/backup.json")) if self.base_dir.is_dir() else []:
            try:
                found.append(BaseBackup.from_json(record.parent, json.loads(record.read_text())))
            except (ValueError, KeyError) as exc:
                raise StackError(f"{record} is not a backup record ({exc}); move that folder away") from None
        return sorted(found, key=lambda b: b.finished_at)

    def wal_files(self) -> list[Path]:
        """The archive's finished files (not the ``.part`` of a segment being archived)."""
        if not self.wal_dir.is_dir():
            return []
        return sorted(p for p in self.wal_dir.iterdir() if not p.name.endswith(".part"))

    def take(self, account: ServerAccount) -> BaseBackup:
        """``pg_basebackup`` of the whole cluster (tar, gzip level 1, fast checkpoint, its WAL streamed in)."""
        prepare_backup_dir(self.root, account)
        _require_archiving(self.settings)
        started = datetime.now(UTC)
        stamp = backup_stamp(started)
        final = self.base_dir / stamp
        partial = self.base_dir / f"{stamp}.partial"
        if final.exists():
            raise StackError(f"{final} exists already; wait a second and run make backup again")
        url = urlsplit(self.settings.database_url)
        env = {**os.environ, "PGPASSWORD": unquote(url.password or ""), "PGCONNECT_TIMEOUT": "10"}
        if self.settings.secure:  # the client tools have no SSL: the server account's private socket
            socket_dir = PostgresServer(self.settings).socket_dir
            connection = f"host={socket_dir} port={url.port or 5432} user={unquote(url.username or '')}"
        else:
            netloc = (url.hostname or "") + (f":{url.port}" if url.port else "")
            if url.username:
                netloc = f"{url.username}@{netloc}"
            connection = url._replace(netloc=netloc, path="", query="").geturl()
        result = account.run([str(pg_bin_dir() / "pg_basebackup"), "-d", connection, "-D", str(partial), "-Ft",
                              "--compress=client-gzip:1", "--checkpoint=fast", "--no-password",
                              f"--label=crypto-platform {stamp}"], env=env)
        if result.returncode != 0:
            shutil.rmtree(partial, ignore_errors=True)
            lines = (result.stderr or result.stdout).strip().splitlines()
            raise StackError(f"pg_basebackup failed: {lines[-1] if lines else 'no output'}")
        manifest = json.loads((partial / "backup_manifest").read_text())
        size = sum(path.stat().st_size for path in partial.iterdir())
        backup = BaseBackup(final, started, datetime.now(UTC), start_segment(manifest), size)
        record = partial / "backup.json"
        record.write_text(json.dumps(backup.to_json(), indent=1) + "\n")
        account.own(record)
        partial.rename(final)
        log.info("base backup taken", extra={"backup": stamp, "bytes": size,
                                             "seconds": round((backup.finished_at - started).total_seconds(), 1)})
        return backup

    def prune(self, keep: int) -> tuple[list[BaseBackup], int]:
        """Deletes base backups beyond the ``keep`` newest, unfinished ones, and the WAL only they needed."""
        for leftover in self.base_dir.glob("*.partial"):
            shutil.rmtree(leftover, ignore_errors=True)
        doomed = backups_to_delete(self.backups(), keep)
        for backup in doomed:
            shutil.rmtree(backup.path)
        kept = self.backups()
        deleted_wal = 0
        if kept:
            oldest_needed = min(kept, key=lambda b: b.finished_at).start_segment
            for name in wal_to_delete([path.name for path in self.wal_files()], oldest_needed):
                (self.wal_dir / name).unlink(missing_ok=True)
                deleted_wal += 1
        return doomed, deleted_wal


def archiver_state(settings: PlatformSettings) -> ArchiverState | None:
    """What ``pg_stat_archiver`` says, or None when the server is not reachable or does not archive."""
    try:
        connection = psycopg2.connect(settings.database_url, connect_timeout=3)
    except psycopg2.Error:
        return None
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT current_setting('archive_mode') <> 'off', last_archived_time, last_failed_time,"
                           " last_failed_wal FROM pg_stat_archiver")
            archiving, archived_at, failed_at, failed_wal = cursor.fetchone()
    finally:
        connection.close()
    return ArchiverState(archived_at, failed_at, failed_wal) if archiving else None


def _require_archiving(settings: PlatformSettings) -> None:
    """Base backups without the WAL archive restore only to their own instant: refused for the embedded
    server (it archives from its start), a warning for a server of the user's own."""
    connection = psycopg2.connect(settings.database_url, connect_timeout=10)
    try:
        with connection.cursor() as cursor:
            cursor.execute("SHOW archive_mode")
            mode = cursor.fetchone()[0]
    finally:
        connection.close()
    if mode == "off":
        if settings.embedded_postgres:
            raise StackError("WAL archiving is off on the running PostgreSQL (started by an older platform); "
                             "run make down then make up, then make backup")
        log.warning("archive_mode is off on the server: this base backup restores only to its own instant; "
                    "set up WAL archiving as the README's Backups section shows")


def seal_current_wal(server: PostgresServer) -> None:
    """Before the server stops for a restore: a commit stamped now (so a TIME between the last write and
    now has a commit after it to stop at) and a segment switch (so the archive holds everything)."""
    connection = psycopg2.connect(server.admin_dsn(), connect_timeout=10)
    try:
        connection.autocommit = True
        with connection.cursor() as cursor:
            cursor.execute("BEGIN")
            cursor.execute("SELECT pg_current_xact_id()")
            cursor.execute("COMMIT")
            cursor.execute("SELECT pg_switch_wal()")
    finally:
        connection.close()


def restore_cluster(server: PostgresServer, store: BackupStore, backup: BaseBackup, target: datetime | None) -> Path:
    """Replaces the server's data folder by ``backup`` and replays the archived WAL to ``target`` (the end
    of the WAL when None); the server runs and accepts writes again on return. The folder it replaced is
    kept as ``postgres/data.before-restore`` (one, the latest) and its path returned; a restore that failed
    (e.g. a TIME past the archive's end) can be run again without losing that folder."""
    account = ServerAccount.for_current_user()
    if server.is_running():
        seal_current_wal(server)
        server.stop()
    if server.is_running():
        raise StackError("PostgreSQL did not stop; stop it (make down) and run make restore again")
    data = server.data_dir
    aside = server.root / "data.before-restore"
    if (data / "recovery.signal").exists():
        shutil.rmtree(data)  # a restore that did not finish: the folder from before it is aside already
    elif data.exists():
        shutil.rmtree(aside, ignore_errors=True)
        data.rename(aside)
    data.mkdir(mode=0o700)
    account.own(data)
    for archive, into in ((backup.path / "base.tar.gz", data), (backup.path / "pg_wal.tar.gz", data / "pg_wal")):
        result = account.run(["tar", "-xzf", str(archive), "-C", str(into)])
        if result.returncode != 0:
            raise StackError(f"could not unpack {archive}: {(result.stderr or result.stdout).strip()[:300]}")
    _copy_unarchived_wal(aside / "pg_wal", data / "pg_wal", account)
    (data / RECOVERY_CONF).write_text(recovery_settings(target))
    (data / "recovery.signal").write_text("")
    account.own(data / RECOVERY_CONF, data / "recovery.signal")
    try:
        server.start()
        _wait_until_promoted(server)
    except (StackError, psycopg2.OperationalError) as exc:
        # A recovery that ends early can pass the start's readiness and exit before its first connection;
        # its reason is in the log once the server has stopped.
        wait_until(lambda: not server.is_running(), FAILED_RECOVERY_EXIT_S, interval=0.5)
        reason = _server_fatal(server) or str(exc).splitlines()[0]
        raise StackError(f"recovery failed: {reason}; the data from before the restore "
                         f"is kept in {aside}; run make restore again with an earlier TIME or none") from None
    (data / RECOVERY_CONF).unlink(missing_ok=True)
    return aside


def _copy_unarchived_wal(old_wal: Path, new_wal: Path, account: ServerAccount) -> None:
    """The old server's own segments, the newest of which may not be archived yet (PostgreSQL's manual:
    copy pg_wal's unarchived files into the restored cluster); recovery prefers the archive's copy."""
    if not old_wal.is_dir():
        return
    for segment in old_wal.iterdir():
        if SEGMENT.match(segment.name) and not (new_wal / segment.name).exists():
            shutil.copy2(segment, new_wal / segment.name)
            account.own(new_wal / segment.name)


def _wait_until_promoted(server: PostgresServer) -> None:
    def promoted() -> bool:
        if not server.is_running():
            raise StackError(f"PostgreSQL stopped during recovery; read {server.log_dir}")
        try:
            connection = psycopg2.connect(server.admin_dsn(), connect_timeout=5)
        except psycopg2.OperationalError:
            return False
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_is_in_recovery()")
                return not cursor.fetchone()[0]
        finally:
            connection.close()

    started = time.monotonic()
    if not wait_until(promoted, RECOVERY_TIMEOUT_S, interval=0.5):
        raise StackError(f"PostgreSQL still recovering after {RECOVERY_TIMEOUT_S} s; read {server.log_dir}")
    log.info("recovery finished", extra={"seconds": round(time.monotonic() - started, 1)})


def _server_fatal(server: PostgresServer) -> str:
    """Why recovery stopped, from the newest server log: its startup process's last FATAL line."""
    logs = sorted(server.log_dir.glob("postgresql-*.log"), key=lambda p: p.stat().st_mtime)
    reason = recovery_fatal(tail(logs[-1], 200)) if logs else None
    return f"PostgreSQL: {reason}" if reason else ""

