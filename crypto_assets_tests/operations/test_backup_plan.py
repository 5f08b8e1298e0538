"""Backups and point-in-time recovery, the pure decisions: WAL names, the base backup a restore starts
from, retention, the restore target, the rewind of the streams; and the archive command run by a shell."""

from __future__ import annotations

import shutil
import subprocess
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from local_stack.backup_plan import (
    GZIP,
    WAL_COMPRESSORS,
    ZSTD,
    ArchiverState,
    BackupError,
    BaseBackup,
    WalCompressor,
    archive_command,
    backups_to_delete,
    choose_base_backup,
    conf_literal,
    describe_backups,
    parse_target,
    recovery_fatal,
    recovery_settings,
    restore_command,
    rewound_acked,
    segment_name,
    start_segment,
    wal_to_delete,
)
from local_stack.postgres import wal_compressor
from streaming_services.messages import TradeMessage
from streaming_services.postgres_sink import Accepted, Rejected, next_offsets

NOW = datetime(2026, 11, 28, 16, 0, tzinfo=UTC)


def backup(name: str, finished_minutes_ago: int, segment: str = "000000010000000000000003") -> BaseBackup:
    finished = NOW - timedelta(minutes=finished_minutes_ago)
    return BaseBackup(Path(name), finished - timedelta(seconds=5), finished, segment, 1000)


def test_segment_names_follow_postgresql() -> None:
    assert segment_name(1, "0/3000028") == "000000010000000000000003"
    assert segment_name(2, "1/A0000000") == "0000000200000001000000A0"
    manifest = {"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/5000028", "End-LSN": "0/5000100"}]}
    assert start_segment(manifest) == "000000010000000000000005"


@pytest.mark.parametrize(("raw", "error"), [
    ("yesterday", "is not an ISO instant"),
    ("2026-11-28T15:00:00", "has no time zone"),
    ("2026-11-28T17:00:00Z", "is not in the past"),
])
def test_a_bad_time_is_one_line_naming_time(raw: str, error: str) -> None:
    with pytest.raises(BackupError, match=error) as caught:
        parse_target(raw, NOW)
    assert str(caught.value).startswith(f"TIME={raw!r}") and "\n" not in str(caught.value)


def test_time_is_read_in_its_zone_and_empty_means_latest() -> None:
    assert parse_target("2026-11-28T16:30:00+01:00", NOW) == datetime(2026, 11, 28, 15, 30, tzinfo=UTC)
    assert parse_target("2026-11-28T15:30:00Z", NOW) == datetime(2026, 11, 28, 15, 30, tzinfo=UTC)
    assert parse_target("", NOW) is None and parse_target(None, NOW) is None


def test_a_restore_starts_from_the_newest_backup_finished_before_the_target() -> None:
    backups = [backup("old", 120), backup("middle", 60), backup("new", 10)]
    assert choose_base_backup(backups, None).path.name == "new"
    assert choose_base_backup(backups, NOW - timedelta(minutes=30)).path.name == "middle"
    assert choose_base_backup(backups, NOW - timedelta(minutes=60)).path.name == "old"  # "middle" ends there
    with pytest.raises(BackupError, match="before the oldest base backup finished"):
        choose_base_backup(backups, NOW - timedelta(minutes=200))
    with pytest.raises(BackupError, match="run make backup first"):
        choose_base_backup([], None)


def test_retention_keeps_the_newest_backups_and_the_wal_they_need() -> None:
    backups = [backup("a", 300, "000000010000000000000002"), backup("b", 200, "000000010000000000000007"),
               backup("c", 100, "00000002000000000000000A")]
    assert [b.path.name for b in backups_to_delete(backups, 2)] == ["a"]
    assert backups_to_delete(backups, 7) == []
    archive = ["000000010000000000000002.gz", "000000010000000000000006.zst",
               "000000010000000000000006.00000028.backup.gz", "000000010000000000000007.zst",
               "000000010000000000000009.partial.zst", "00000002.history.gz", "00000002000000000000000A.zst"]
    assert wal_to_delete(archive, "000000010000000000000007") == [
        "000000010000000000000002.gz", "000000010000000000000006.zst", "000000010000000000000006.00000028.backup.gz"]


def test_recovery_settings_name_the_target_in_utc() -> None:
    text = recovery_settings(datetime(2026, 11, 28, 18, 30, 1, 250000, tzinfo=timezone(timedelta(hours=1))))
    assert "recovery_target_time = '2026-11-28 17:30:01.250000+00'" in text
    assert "recovery_target_action = 'promote'" in text
    assert "recovery_target_time =" not in recovery_settings(None)
    assert conf_literal("it's") == "'it''s'"


def test_a_failed_recovery_is_explained_by_the_startup_process_not_by_refused_clients() -> None:
    """CI saw "recovery failed: ... the database system is in recovery mode": the last FATAL line of the log
    was a client refused while recovery ended, not the reason recovery ended."""
    log = "\n".join([
        "2026-12-07 09:29:56.101 UTC [4242] LOG:  starting point-in-time recovery to 2026-12-07 09:29:55.287+00",
        "2026-12-07 09:29:56.480 UTC [4242] FATAL:  recovery ended before configured recovery target was reached",
        "2026-12-07 09:29:56.481 UTC [4250] crypto@postgres FATAL:  the database system is in recovery mode",
        "2026-12-07 09:29:56.482 UTC [4251] [unknown]@[unknown] FATAL:  the database system is shutting down",
        "2026-12-07 09:29:56.490 UTC [4240] LOG:  startup process (PID 4242) exited with exit code 1",
    ])
    assert recovery_fatal(log) == "recovery ended before configured recovery target was reached"
    assert recovery_fatal(log.splitlines()[2]) is None


@pytest.mark.parametrize("compressor", WAL_COMPRESSORS, ids=lambda c: c.program)
def test_the_archive_keeps_a_segment_once_and_refuses_a_different_one(tmp_path: Path,
                                                                      compressor: WalCompressor) -> None:
    archive, data = tmp_path / "wal dir", tmp_path / "data"
    archive.mkdir()
    (data / "pg_wal").mkdir(parents=True)
    segment = data / "pg_wal" / "000000010000000000000001"
    segment.write_bytes(b"wal" * 1000)

    def run(command: str, name: str) -> int:
        text = command.replace("%p", f"pg_wal/{name}").replace("%f", name)
        return subprocess.run(["sh", "-c", text], cwd=data, check=False).returncode

    assert run(archive_command(archive, compressor), segment.name) == 0
    assert [p.name for p in archive.iterdir()] == [segment.name + compressor.suffix]
    assert run(archive_command(archive, compressor), segment.name) == 0  # archived again after a crash
    for other in WAL_COMPRESSORS:  # the same segment, kept by either compressor, is accepted by the other
        assert run(archive_command(archive, other), segment.name) == 0
    segment.write_bytes(b"other")
    for other in WAL_COMPRESSORS:  # a different one is never overwritten, whatever the suffix
        assert run(archive_command(archive, other), segment.name) != 0
    (archive / (segment.name + compressor.suffix)).unlink()  # the other compressor's copy stays, and restores
    (data / "pg_wal" / "restored").unlink(missing_ok=True)
    assert run(restore_command(archive).replace("%p", "pg_wal/restored"), segment.name) == 0
    assert (data / "pg_wal" / "restored").read_bytes() == b"wal" * 1000
    assert run(restore_command(archive).replace("%p", "pg_wal/x"), "000000010000000000000009") != 0


def test_the_archive_compresses_with_zstd_where_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda program: "/usr/bin/zstd" if program == "zstd" else None)
    assert wal_compressor() == ZSTD
    monkeypatch.setattr(shutil, "which", lambda program: None)
    assert wal_compressor() == GZIP


def test_the_producer_never_runs_ahead_of_the_restored_database() -> None:
    acked = {"BTCUSDT": 500, "ETHUSDT": 90, "SOLUSDT": 40}
    restored = {"BTCUSDT": 420, "ETHUSDT": 95}
    # ETHUSDT: the database holds more than acknowledged (a file saved a second before); SOLUSDT: nothing
    # in the restored database, Kafka delivers it again from the rewound group.
    assert rewound_acked(acked, restored) == {"BTCUSDT": 420, "ETHUSDT": 90, "SOLUSDT": 40}


def test_a_batch_records_the_offset_after_its_last_message_per_partition() -> None:
    trade = TradeMessage.from_agg_trade({"e": "aggTrade", "E": 1, "s": "BTCUSDT", "a": 1, "p": "1", "q": "1", "f": 1,
                                         "l": 1, "T": 1_700_000_000_000, "m": True}, "replay")
    accepted = [Accepted(trade, "t", 0, 7), Accepted(trade, "t", 2, 3), Accepted(trade, "t", 0, 9)]
    rejected = [Rejected("t", 2, 4, None, b"x", "bad"), Rejected("t", 1, 0, None, b"x", "bad")]
    assert next_offsets(accepted, rejected) == [("t", 0, 10), ("t", 1, 1), ("t", 2, 5)]


def test_status_says_how_old_the_newest_backup_is_and_whether_archiving_fails() -> None:
    backups = [backup("a", 600), backup("b", 90)]
    working = ArchiverState(NOW - timedelta(seconds=20), NOW - timedelta(hours=2), "000000010000000000000002")
    assert describe_backups(backups, working, NOW) == \
        "newest base backup 1.5 h old, 2 kept; WAL archived 20 s ago"
    failing = ArchiverState(NOW - timedelta(minutes=5), NOW - timedelta(seconds=3), "000000010000000000000009")
    assert "WAL ARCHIVING FAILS (segment 000000010000000000000009" in describe_backups(backups, failing, NOW)
    assert describe_backups([], ArchiverState(None, None, None), NOW) == \
        "no base backup yet (make backup); no WAL segment archived yet"
    assert describe_backups([], None, NOW) == "no base backup yet (make backup)"
