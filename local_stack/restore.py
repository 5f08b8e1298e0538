"""``make restore``: the whole platform back to an instant. Stops what writes, restores the PostgreSQL
cluster (market data, Dagster, Superset) from a base backup and its WAL, rewinds the producer and the
consumer group to the restored database, cancels the Dagster runs it caught in flight, and starts again
what was running."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from local_stack.backup_plan import BaseBackup, choose_base_backup
from local_stack.backups import BackupStore, restore_cluster
from local_stack.interrupted_runs import cancel_interrupted_runs
from local_stack.processes import StackError
from local_stack.stack import LocalStack
from local_stack.stream_rewind import Rewind, rewind_streams


@dataclass(frozen=True)
class RestoreReport:
    backup: BaseBackup
    target: datetime | None
    replaced: Path
    rewind: Rewind
    canceled_runs: list[str]
    restarted: list[str]
    seconds: float


def restore_platform(stack: LocalStack, target: datetime | None,
                     progress: Callable[[str], None] = lambda _: None) -> RestoreReport:
    settings = stack.settings
    if not settings.embedded_postgres:
        raise StackError("DATABASE_URL is set: restore a server of your own with its own tools "
                         "(the README's Backups section shows how)")
    started = time.monotonic()
    backup = choose_base_backup(BackupStore(settings).backups(), target)
    running = [service for service in stack.stopped_services() if service.is_running()]
    for service in reversed(running):
        progress(f"stopping {service.name}")
        service.stop()
    progress(f"restoring PostgreSQL from base backup {backup.path.name}, WAL replayed to "
             f"{target.isoformat() if target else 'its end'}")
    replaced = restore_cluster(stack.postgres, BackupStore(settings), backup, target)
    progress("starting Kafka; rewinding the consumer group and the producer to the restored database")
    stack.start_servers()
    rewind = rewind_streams(settings)
    canceled = cancel_interrupted_runs(settings)
    names = {service.name for service in running}
    restarted = []
    for service in stack.services():
        if service.name in names:
            progress(f"starting {service.name}")
            service.start(say=progress)
            restarted.append(service.name)
    return RestoreReport(backup, target, replaced, rewind, canceled, restarted, time.monotonic() - started)
