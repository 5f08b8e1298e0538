"""What a user sees: how long after a one-minute window closes its candle is final, on a whole platform.

``python -m bench.freshness [--minutes 6] [--paths connect,in-process] [--modes plain,secure]``

For each path, a throwaway platform (``make up`` in a private state folder on free ports, no Superset,
the replay feed) runs for ``--minutes`` after ``make up`` returned. Meanwhile the benchmark polls
``stock.aggregated_prices_1min`` twice a second and records, for every window that closes in that time,
the first moment every symbol's candle of it is final; after the last window it waits up to
``FINAL_WAIT_S`` for it. Then it reads the candle runs from Dagster's storage: wall time (start to
end), the Spark share (the steps' ``spark_seconds`` over the wall time), the resource set-up (Spark
session acquisition) and the run's start after its minute closed. ``connect`` is the default
(``SPARK_REMOTE`` = the local Spark Connect server); ``in-process`` sets ``SPARK_REMOTE=`` empty (a
JVM per run). Both print in one invocation, with the machine's load average. On the ``connect`` path it
then stops Dagster (no run attaches any more) and reads the Spark Connect server's idle cost: its resident
memory and its CPU over ``IDLE_S`` quiet seconds. ``--modes plain,secure`` measures each path with SECURE=0,
then SECURE=1 (a platform each), and prints both side by side with secure/plain.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psutil
import psycopg2

from bench.modes import MODES, Figure, comparison, mode_list
from crypto_assets_tests.platform_harness import PlatformUnderTest  # run from the repository's root
from crypto_platform.settings import PlatformSettings
from local_stack.dagster_instance import dagster_instance
from local_stack.stack import LocalStack

FINAL_WAIT_S = 120
IDLE_S = 60
POLL_S = 0.5
PATHS = {"connect": {}, "in-process": {"SPARK_REMOTE": ""}}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, -(-len(ordered) * q // 100) - 1))]


@dataclass
class PathFigures:
    name: str
    delays_s: list[float] = field(default_factory=list)
    not_final: int = 0
    run_wall_s: list[float] = field(default_factory=list)
    spark_s: list[float] = field(default_factory=list)
    session_s: list[float] = field(default_factory=list)
    requested_after_close_s: list[float] = field(default_factory=list)
    start_after_close_s: list[float] = field(default_factory=list)
    load: tuple[float, float, float] = (0.0, 0.0, 0.0)
    idle_cost: str = ""
    # Where a run's wall time goes: "process start" (run start → first step), each step, "between steps".
    parts_s: dict[str, list[float]] = field(default_factory=dict)
    # Each run: (start time, wall s, start after its minute closed s), to see which runs make the p95.
    runs: list[tuple[float, float, float | None]] = field(default_factory=list)

    def lines(self) -> list[str]:
        def fmt(values: list[float], q: float) -> str:
            value = percentile(values, q)
            return "-" if value is None else f"{value:.1f}"

        share = sum(self.spark_s) / sum(self.run_wall_s) if self.run_wall_s else 0.0
        return [
            f"{self.name}: window end -> final, {len(self.delays_s)} windows"
            + (f" ({self.not_final} not final within {FINAL_WAIT_S} s)" if self.not_final else "")
            + f": p50 {fmt(self.delays_s, 50)} s, p95 {fmt(self.delays_s, 95)} s, max {fmt(self.delays_s, 100)} s",
            f"{self.name}: candle runs {len(self.run_wall_s)}: wall p50 {fmt(self.run_wall_s, 50)} s, "
            f"p95 {fmt(self.run_wall_s, 95)} s; Spark share {share:.0%}; session set-up p50 "
            f"{fmt(self.session_s, 50)} s, p95 {fmt(self.session_s, 95)} s",
            f"{self.name}: after its minute closed, the run was requested p50 {fmt(self.requested_after_close_s, 50)}"
            f" s, p95 {fmt(self.requested_after_close_s, 95)} s and started p50 {fmt(self.start_after_close_s, 50)}"
            f" s, p95 {fmt(self.start_after_close_s, 95)} s",
            f"{self.name}: load average during the run {self.load[0]:.1f} {self.load[1]:.1f} {self.load[2]:.1f}",
            f"{self.name}: where a run's time goes (p50 s): " + ", ".join(
                f"{part} {fmt(values, 50)}" for part, values in
                sorted(self.parts_s.items(), key=lambda item: -(percentile(item[1], 50) or 0.0))),
            f"{self.name}: each run (start UTC, wall s, start after close s): " + ", ".join(
                f"{datetime.fromtimestamp(start, UTC):%H:%M:%S} {wall:.1f}"
                + ("" if after is None else f" (+{after:.1f})") for start, wall, after in sorted(self.runs)),
        ] + ([f"{self.name}: {self.idle_cost}"] if self.idle_cost else [])

    def figures(self) -> dict[str, Figure]:
        """The latencies the secure/plain comparison reads (seconds, lower is better): the candle latency a user
        sees (window end → final) is held to the goal; the runs' wall time and session set-up say where it goes."""
        measured = {"window end -> final": self.delays_s, "candle run wall": self.run_wall_s,
                    "session set-up": self.session_s}
        return {f"{name} p{q}, s": Figure(value, False, judged=name == "window end -> final")
                for name, values in measured.items() for q in (50, 95) if (value := percentile(values, q)) is not None}


def _final_windows(connection, since: datetime) -> dict[datetime, bool]:
    """Per window ending after ``since``: whether every symbol's candle of it is final."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT window_end, bool_and(is_final) FROM stock.aggregated_prices_1min"
                       " WHERE window_end > %s GROUP BY window_end", (since,))
        return dict(cursor.fetchall())


def watch_windows(database_url: str, started: float, minutes: int) -> tuple[list[float], int]:
    """Delays (s) from each window's end to the first poll that saw it final; count of windows never final."""
    since = datetime.fromtimestamp(started).astimezone()
    first_minute = int(started // 60 + 1) * 60
    windows = [first_minute + 60 * i for i in range(minutes)]
    seen: dict[int, float] = {}
    deadline = windows[-1] + FINAL_WAIT_S
    connection = psycopg2.connect(database_url, connect_timeout=10)
    connection.autocommit = True
    try:
        while time.time() < deadline and len(seen) < len(windows):
            polled = time.time()
            for end, final in _final_windows(connection, since).items():
                end_s = int(end.timestamp())
                if final and end_s in windows and end_s not in seen:
                    seen[end_s] = polled - end_s
            time.sleep(max(0.0, POLL_S - (time.time() - polled)))
    finally:
        connection.close()
    return [seen[w] for w in windows if w in seen], len([w for w in windows if w not in seen])


def run_figures(settings: PlatformSettings, figures: PathFigures, since: float) -> None:
    """Candle runs the sensor launched after ``since``: wall time, Spark seconds, resource set-up, start delay."""
    from dagster import DagsterEventType, DagsterRunStatus, RunsFilter

    with dagster_instance(settings) as instance:
        records = instance.get_run_records(RunsFilter(job_name="candles_job", statuses=[DagsterRunStatus.SUCCESS]))
        for record in records:
            if record.start_time is None or record.end_time is None or record.start_time < since:
                continue
            figures.run_wall_s.append(record.end_time - record.start_time)
            closed = record.dagster_run.tags.get("crypto/minute_closed")
            if closed:
                closed_at = datetime.fromisoformat(closed).timestamp()
                figures.requested_after_close_s.append(record.create_timestamp.timestamp() - closed_at)
                figures.start_after_close_s.append(record.start_time - closed_at)
            events = instance.all_logs(record.dagster_run.run_id)
            spark: dict[str, float] = {}  # per step: a step that writes several assets shares one Spark job
            init_started = None
            step_started: dict[str, float] = {}
            in_steps = 0.0
            for event in events:
                dagster_event = event.dagster_event
                if dagster_event is None:
                    continue
                if dagster_event.event_type == DagsterEventType.STEP_START:
                    if not step_started:
                        figures.parts_s.setdefault("process start", []).append(event.timestamp - record.start_time)
                    step_started[dagster_event.step_key] = event.timestamp
                elif (dagster_event.event_type == DagsterEventType.STEP_SUCCESS
                      and dagster_event.step_key in step_started):
                    took = event.timestamp - step_started[dagster_event.step_key]
                    figures.parts_s.setdefault(dagster_event.step_key, []).append(took)
                    in_steps += took
                elif dagster_event.event_type == DagsterEventType.RESOURCE_INIT_STARTED and init_started is None:
                    init_started = event.timestamp
                elif dagster_event.event_type == DagsterEventType.RESOURCE_INIT_SUCCESS and init_started is not None:
                    figures.session_s.append(event.timestamp - init_started)
                    init_started = float("inf")
                elif dagster_event.event_type == DagsterEventType.ASSET_MATERIALIZATION:
                    value = dagster_event.event_specific_data.materialization.metadata.get("spark_seconds")
                    if value is not None:
                        step = dagster_event.step_key
                        spark[step] = max(spark.get(step, 0.0), float(value.value))
            figures.spark_s.append(sum(spark.values()))
            figures.runs.append((record.start_time, record.end_time - record.start_time,
                                 figures.start_after_close_s[-1] if closed else None))
            if step_started:
                first_step = min(step_started.values())
                figures.parts_s.setdefault("between steps", []).append(record.end_time - first_step - in_steps)


def connect_idle_cost(settings: PlatformSettings) -> str:
    """The Spark Connect server's resident memory and CPU over ``IDLE_S`` seconds with Dagster stopped;
    empty when the stack runs no Connect server (the in-process path)."""
    services = {service.name: service for service in LocalStack(settings).services()}
    server = services.get("spark-connect")
    if server is None or server.pid() is None:
        return ""
    services["dagster"].stop()
    root = psutil.Process(server.pid())
    processes = [root, *root.children(recursive=True)]

    def cpu_s() -> float:
        return sum(sum(p.cpu_times()[:2]) for p in processes)

    before, started = cpu_s(), time.monotonic()
    time.sleep(IDLE_S)
    share = (cpu_s() - before) / (time.monotonic() - started)
    rss_mb = sum(p.memory_info().rss for p in processes) / 2**20
    return (f"Spark Connect server idle (Dagster stopped): RSS {rss_mb:.0f} MB, CPU {share:.2%} of one core over "
            f"{IDLE_S} s")


def measure(name: str, overrides: dict[str, str], minutes: int) -> PathFigures:
    platform = PlatformUnderTest.create(SUPERSET="0", **overrides)
    figures = PathFigures(name)
    try:
        print(f"{name}: make up (state in {platform.state_dir})", flush=True)
        try:
            platform.make("up", timeout=1200)
        except AssertionError as error:  # a server slower than its readiness deadline on a loaded machine
            print(f"{name}: make up failed, once more (it restarts only what is down): {str(error)[:300]}", flush=True)
            platform.make("up", timeout=1200)
        started = time.time()
        print(f"{name}: up; watching {minutes} windows", flush=True)
        figures.delays_s, figures.not_final = watch_windows(platform.database_url, started, minutes)
        figures.load = os.getloadavg()
        run_figures(platform.settings, figures, started)
        figures.idle_cost = connect_idle_cost(platform.settings)
    finally:
        platform.destroy()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.freshness", description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=int, default=6, help="closed windows to measure per path (default 6)")
    parser.add_argument("--paths", default=",".join(PATHS), help="comma list of: " + ", ".join(PATHS))
    parser.add_argument("--modes", type=mode_list, default=["plain"],
                        help="comma list of plain (SECURE=0), secure (SECURE=1): each path in each, then compared")
    args = parser.parse_args(argv)
    paths = [p.strip() for p in args.paths.split(",") if p.strip()]
    unknown = [p for p in paths if p not in PATHS]
    if args.minutes < 1 or unknown or not paths:
        print(f"bench.freshness: --minutes must be at least 1 and --paths a list of {', '.join(PATHS)}",
              file=sys.stderr)
        return 2
    results = {(path, mode): measure(path if len(args.modes) == 1 else f"{path} {mode}",
                                     {**PATHS[path], "SECURE": MODES[mode]}, args.minutes)
               for path in paths for mode in args.modes}
    print("\n".join(line for figures in results.values() for line in figures.lines()), flush=True)
    if {"plain", "secure"} <= set(args.modes):
        for path in paths:
            print(f"{path}, SECURE=1 against plaintext:", flush=True)
            print("\n".join(comparison({mode: results[path, mode].figures() for mode in MODES})), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
