"""Backups and point-in-time recovery, the decisions without the I/O: WAL names, which base backup a
restore starts from, what retention deletes, the archive and restore commands, the restore target.

Layout of ``BACKUP_DIR``: ``wal/`` holds every WAL segment PostgreSQL archived (``<name>.zst`` by zstd, or
``<name>.gz`` by gzip where zstd is not installed) and the timelines' ``.history`` files; ``base/<UTC stamp>/``
holds one ``pg_basebackup`` (tar, gzip) with its ``backup.json`` (written last: a folder without it is an
unfinished backup).
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

WAL_SEGMENT_BYTES = 16 * 1024 * 1024
SEGMENTS_PER_LOG = 0x1_0000_0000 // WAL_SEGMENT_BYTES
# A quiet server switches to a new segment at least this often, so at most this much of committed work
# is only in pg_wal (lost with STATE_DIR's disk); a forced switch costs ~20 kB compressed.
ARCHIVE_TIMEOUT_S = 60
SEGMENT = re.compile(r"^[0-9A-F]{24}$")
# A server log line (log_line_prefix '%m [%p] %q%u@%d ') from a process without a session: the startup
# process that replays WAL, not a client whose connection was refused meanwhile ("user@db FATAL: ...").
SERVER_PROCESS_FATAL = re.compile(r"^\S+ \S+ \S+ \[\d+\] FATAL:\s*(.+)$")
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"


@dataclass(frozen=True)
class WalCompressor:
    """How the archive compresses a segment: the file's suffix and the two shell filters (stdin to stdout)."""

    program: str
    suffix: str
    compress: str
    decompress: str


# zstd first: on a segment of trades, `zstd -1` took 0.05 s of CPU and wrote 3.6 MB where `gzip -1` took
# 0.17 s and wrote 4.8 MB, CPU the archiver takes from ingestion on the same cores. gzip where zstd is missing.
ZSTD = WalCompressor("zstd", ".zst", "zstd -1 -q -c", "zstd -d -q -c")
GZIP = WalCompressor("gzip", ".gz", "gzip -1 -n", "gzip -d -c")
WAL_COMPRESSORS = (ZSTD, GZIP)
# A segment, a backup's history file or a timeline's last partial segment, as archived (compressed or not).
ARCHIVED_WAL = re.compile(r"^([0-9A-F]{24})(\.[0-9A-F]{8}\.backup|\.partial)?("
                          + "|".join(re.escape(c.suffix) for c in WAL_COMPRESSORS) + ")?$")


class BackupError(ValueError):
    """A restore or backup request the platform cannot carry out; one line naming what to change."""


@dataclass(frozen=True)
class BaseBackup:
    """One finished base backup: its folder and what ``backup.json`` says of it."""

    path: Path
    started_at: datetime
    finished_at: datetime
    start_segment: str
    size_bytes: int

    def to_json(self) -> dict[str, object]:
        return {"started_at": self.started_at.isoformat(), "finished_at": self.finished_at.isoformat(),
                "start_segment": self.start_segment, "size_bytes": self.size_bytes}

    @classmethod
    def from_json(cls, path: Path, data: dict[str, object]) -> BaseBackup:
        return cls(path, datetime.fromisoformat(str(data["started_at"])),
                   datetime.fromisoformat(str(data["finished_at"])), str(data["start_segment"]),
                   int(data["size_bytes"]))


def segment_name(timeline: int, lsn: str) -> str:
    """The WAL file holding ``lsn`` (``'0/3000028'``) on ``timeline``, as PostgreSQL names it."""
    high, low = (int(part, 16) for part in lsn.split("/"))
    segment = ((high << 32) + low) // WAL_SEGMENT_BYTES
    return f"{timeline:08X}{segment // SEGMENTS_PER_LOG:08X}{segment % SEGMENTS_PER_LOG:08X}"


def start_segment(manifest: dict) -> str:
    """The first WAL segment a base backup needs, from its ``backup_manifest`` (its first WAL range)."""
    first = manifest["WAL-Ranges"][0]
    return segment_name(int(first["Timeline"]), first["Start-LSN"])


def parse_target(raw: str | None, now: datetime) -> datetime | None:
    """``TIME`` of ``make restore``: an ISO instant with its zone, in the past; empty = the latest state."""
    if raw is None or not raw.strip():
        return None
    try:
        target = datetime.fromisoformat(raw.strip().replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BackupError(f"TIME={raw!r} is not an ISO instant such as 2026-11-28T16:30:00Z") from None
    if target.tzinfo is None:
        raise BackupError(f"TIME={raw!r} has no time zone; add Z (UTC) or an offset such as +01:00")
    if target >= now:
        raise BackupError(f"TIME={raw!r} is not in the past; leave TIME out to restore the latest state")
    return target.astimezone(UTC)


def choose_base_backup(backups: list[BaseBackup], target: datetime | None) -> BaseBackup:
    """The newest base backup that finished before ``target`` (recovery must start from a consistent copy
    and replay forward); the newest of all for the latest state."""
    if not backups:
        raise BackupError("no base backup in BACKUP_DIR yet; run make backup first")
    usable = [b for b in backups if target is None or b.finished_at < target]
    if not usable:
        oldest = min(backups, key=lambda b: b.finished_at)
        raise BackupError(f"TIME={target.isoformat()} is before the oldest base backup finished "
                          f"({oldest.finished_at.isoformat()}); choose a later TIME")
    return max(usable, key=lambda b: b.finished_at)


def backups_to_delete(backups: list[BaseBackup], keep: int) -> list[BaseBackup]:
    """Everything but the ``keep`` newest (BACKUP_KEEP)."""
    return sorted(backups, key=lambda b: b.finished_at, reverse=True)[keep:]


def wal_to_delete(names: list[str], oldest_needed: str) -> list[str]:
    """Archived segments (and their ``.backup`` and ``.partial`` files) older than ``oldest_needed`` (the
    oldest kept backup's first segment), compared as ``pg_archivecleanup`` does, without the timeline;
    timeline ``.history`` files are always kept."""
    doomed = []
    for name in names:
        match = ARCHIVED_WAL.match(name)
        if match and match.group(1)[8:] < oldest_needed[8:]:
            doomed.append(name)
    return doomed


def conf_literal(text: str) -> str:
    """A postgresql.conf string value."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


def archive_command(wal_dir: Path, compressor: WalCompressor) -> str:
    """Copies a finished segment into the archive, compressed, atomically. An existing copy, under any
    compressor's suffix, is accepted only when it decompresses to the same segment (archived again after a
    crash, or after a change of compressor); a different one is never overwritten and fails the command."""
    folder = shlex.quote(str(wal_dir))
    target = f"{folder}/%f{compressor.suffix}"
    same_or_none = " && ".join(f"{{ test ! -f {folder}/%f{c.suffix} || {c.decompress} < {folder}/%f{c.suffix} | "
                               "cmp -s - %p; }" for c in WAL_COMPRESSORS)
    return f"{same_or_none} && {compressor.compress} < %p > {target}.part && mv -f {target}.part {target}"


def restore_command(wal_dir: Path) -> str:
    """Fetches a segment (or a timeline's history file) from the archive during recovery, whichever
    compressor archived it."""
    folder = shlex.quote(str(wal_dir))
    tries = [f"test -f {folder}/%f{c.suffix}; then {c.decompress} < {folder}/%f{c.suffix} > %p;"
             for c in WAL_COMPRESSORS]
    return "if " + " elif ".join(tries) + f" else cp {folder}/%f %p; fi"


def recovery_settings(target: datetime | None) -> str:
    """``recovery_target.conf`` of a restore: replay to ``target`` (or to the end of the WAL), then open."""
    lines = ["# Written by make restore; removed once the server is open again.",
             "recovery_target_timeline = 'latest'", "recovery_target_action = 'promote'"]
    if target is not None:
        lines += [f"recovery_target_time = '{target.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'",
                  "recovery_target_inclusive = on"]
    return "\n".join(lines) + "\n"


def recovery_fatal(log_text: str) -> str | None:
    """Why recovery stopped: the last FATAL line of a server process in ``log_text``. Clients refused while
    the server recovers log FATAL lines too ("the database system is in recovery mode"); those say
    nothing about the recovery and are skipped."""
    reasons = [match.group(1).strip() for line in log_text.splitlines()
               if (match := SERVER_PROCESS_FATAL.match(line))]
    return reasons[-1] if reasons else None


def backup_stamp(at: datetime) -> str:
    return at.astimezone(UTC).strftime(STAMP_FORMAT)


def human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def render_backups(backups: list[BaseBackup], wal_bytes: int, wal_files: int) -> str:
    """The table ``make backup`` prints: each base backup with its time, duration and size; the archive."""
    lines = [f"{'base backup':<18}{'finished (UTC)':<22}{'took':>8}{'size':>11}"]
    for backup in sorted(backups, key=lambda b: b.finished_at):
        took = (backup.finished_at - backup.started_at).total_seconds()
        lines.append(f"{backup.path.name:<18}{backup.finished_at.astimezone(UTC).strftime('%Y-%m-%d %H:%M:%S'):<22}"
                     f"{took:>7.1f}s{human_bytes(backup.size_bytes):>11}")
    if not backups:
        lines.append("(none yet)")
    lines.append(f"WAL archive: {wal_files} files, {human_bytes(wal_bytes)}")
    return "\n".join(lines)


def rewound_acked(acked: dict[str, int], restored: dict[str, int]) -> dict[str, int]:
    """The producer's acknowledged ids after a restore: never past the restored database's newest id of
    the symbol, so its REST catch-up sends again what the restore removed. A symbol without a trade in
    the restored database keeps its id: Kafka delivers its trades again (the group is rewound too)."""
    return {symbol: min(agg_id, restored[symbol]) if symbol in restored else agg_id
            for symbol, agg_id in acked.items()}


def age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} s"


@dataclass(frozen=True)
class ArchiverState:
    """``pg_stat_archiver`` of the running server."""

    last_archived_at: datetime | None
    last_failed_at: datetime | None
    last_failed_wal: str | None


def describe_backups(backups: list[BaseBackup], archiver: ArchiverState | None, now: datetime) -> str:
    """``make status``'s backups line: the newest base backup's age, and whether WAL archiving works (a
    failure newer than the last success means segments pile up in pg_wal and recovery stops there)."""
    if backups:
        newest = max(b.finished_at for b in backups)
        parts = [f"newest base backup {age((now - newest).total_seconds())} old, {len(backups)} kept"]
    else:
        parts = ["no base backup yet (make backup)"]
    if archiver is not None:
        failing = archiver.last_failed_at is not None and (
            archiver.last_archived_at is None or archiver.last_failed_at > archiver.last_archived_at)
        if failing:
            parts.append(f"WAL ARCHIVING FAILS (segment {archiver.last_failed_wal}; read the PostgreSQL log)")
        elif archiver.last_archived_at is not None:
            parts.append(f"WAL archived {age((now - archiver.last_archived_at).total_seconds())} ago")
        else:
            parts.append("no WAL segment archived yet")
    return "; ".join(parts)
