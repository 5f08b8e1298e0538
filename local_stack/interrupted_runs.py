"""Dagster runs left in flight by a point-in-time restore: the restored ``dagster`` database may hold a run
that was starting or running at the restore instant, whose process is long gone. Left so, it would stay
``STARTED`` for ever, and the minute-close sensor, which waits while a candle run is in flight, would
never request another run. They are marked canceled (their candles are recomputed by the next run: the
candle cursor was restored to the same instant)."""

from __future__ import annotations

from crypto_platform.settings import PlatformSettings
from local_stack.dagster_instance import dagster_instance

# What a run's own process moves on from; QUEUED runs are left to the run queue, which launches them.
ORPHANED = ("NOT_STARTED", "STARTING", "STARTED", "CANCELING")
MESSAGE = "interrupted: make restore brought the database back to an instant when this run was in flight"


def cancel_interrupted_runs(settings: PlatformSettings) -> list[str]:
    """Marks the runs in flight in the restored Dagster storage canceled; returns their ids."""
    from dagster import DagsterRunStatus, RunsFilter  # Dagster only when it has run here

    if not (settings.state_dir / "dagster" / "dagster.yaml").exists():
        return []
    with dagster_instance(settings) as instance:
        runs = instance.get_runs(filters=RunsFilter(statuses=[DagsterRunStatus(s) for s in ORPHANED]))
        for run in runs:
            instance.report_run_canceled(run, message=MESSAGE)
        return [run.run_id for run in runs]
