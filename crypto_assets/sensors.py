"""The minute-close sensor: one candle run right after each minute closes, never two at once, never one
minute twice.

Why a sensor and not a ``* * * * *`` schedule: a schedule fires at the minute's boundary, before the
trades that close the minute have reached PostgreSQL, so its run would publish the minute as not final
and the minute would wait a whole further minute for the next run. The sensor's cursor is the end of
the last closed minute it requested a run for; it asks for the next run as soon as the stream's
watermark has passed that minute's end (the minute can be published final), or ``CLOSE_GRACE_S``
after it (a quiet stream), whichever comes first.

The daemon evaluates sensors every 5 s at a phase of its own (dagster's ``MIN_INTERVAL_LOOP_TIME``), so a
sensor that only looked would ask up to 5 s after the close, and 5 s more when the watermark had not passed
at that look. So an evaluation that starts in the last ``DAEMON_LOOP_S`` before a close waits for it, and
one that finds the watermark short polls it for up to ``DAEMON_LOOP_S``: the run is asked for as soon as its
minute can be final. An evaluation never lasts more than twice the loop, far below Dagster's sensor timeout.
"""

from __future__ import annotations

import time

import dagster as dg
from dagster._core.definitions.data_version import DATA_VERSION_TAG

from crypto_assets.assets.attributes import PIPELINE_TAG
from crypto_assets.assets.catalog import RUN_ASSETS
from crypto_assets.assets.real_time_prices import observe, real_time_prices
from crypto_assets.candle_runs import now_ms
from crypto_assets.candles import MINUTE_MS, ONE_MINUTE, from_ms, window_start
from crypto_assets.resources import MarketDatabase

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]
# The daemon evaluates sensors at most every 5 s (dagster's MIN_INTERVAL_LOOP_TIME); ask for every loop.
SENSOR_INTERVAL_S = 1
# After a minute closes, wait at most this long for the watermark to pass its end before running anyway.
CLOSE_GRACE_S = 10
# The daemon's sensor loop: an evaluation waits for a close or a watermark at most this long.
DAEMON_LOOP_S = 5
WATERMARK_POLL_S = 0.25

candles_job = dg.define_asset_job(
    "candles_job",
    selection=dg.AssetSelection.assets(*RUN_ASSETS),
    description="Candles of the trades since the last run, then latest prices; checks run after each asset.",
    tags={PIPELINE_TAG: "candles"},
    executor_def=dg.in_process_executor,
)


def _minute(ms: int) -> str:
    return from_ms(ms).strftime("%H:%M")


def sleep_ms(duration_ms: int) -> None:
    time.sleep(duration_ms / 1000)


@dg.sensor(job=candles_job, minimum_interval_seconds=SENSOR_INTERVAL_S, default_status=dg.DefaultSensorStatus.RUNNING)
def minute_close_sensor(context: dg.SensorEvaluationContext, market_db: MarketDatabase
                        ) -> dg.SensorResult | dg.SkipReason:
    """Requests the run that finalizes the minute that just closed, once per minute.

    Conditions, in order: a minute closed since the cursor's (else skip, without touching PostgreSQL);
    no candle run is queued or running (the queued run coordinator's tag limit in dagster.yaml also
    covers runs launched elsewhere); rows past the candle cursor exist, late ones included (else
    nothing would change); every symbol's watermark passed the minute's end or the grace period is over. The run
    key names the minute, so Dagster launches one run per minute whatever the evaluations repeat. With
    the request it records an observation of ``real_time_prices`` (newest trade time as data version).
    """
    started = now_ms()
    next_close = window_start(started, MINUTE_MS) + MINUTE_MS
    if next_close - started <= DAEMON_LOOP_S * 1000:
        sleep_ms(next_close - started)  # the close comes before the daemon's next look
    now = now_ms()
    closed_until = window_start(now, MINUTE_MS)
    requested_until = int(context.cursor) if context.cursor else 0
    if closed_until <= requested_until:
        return dg.SkipReason(f"the run for the minute that closed at {_minute(requested_until)} was requested")
    in_flight = context.instance.get_run_records(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={PIPELINE_TAG: "candles"}), limit=1)
    if in_flight:
        return dg.SkipReason(f"candle run {in_flight[0].dagster_run.run_id} is still in flight")
    store = market_db.store()
    position, waiting, _ = store.pending_trades(ONE_MINUTE)
    if waiting == 0:
        return dg.SkipReason(f"no new trades past cursor {position}")
    polled_until = max(started, closed_until) + DAEMON_LOOP_S * 1000
    while True:
        with store.transaction(snapshot=True) as cursor:
            watermark = min(store.closed_until(cursor).values(), default=None)  # the laggard symbol's
        if (watermark or 0) >= closed_until or now >= closed_until + CLOSE_GRACE_S * 1000:
            break
        if now >= polled_until:
            return dg.SkipReason(f"waiting for the watermark to pass {_minute(closed_until)}")
        sleep_ms(int(WATERMARK_POLL_S * 1000))
        now = now_ms()
    request = dg.RunRequest(run_key=f"minute-{closed_until}",
                            tags={"crypto/minute_closed": from_ms(closed_until).isoformat(),
                                  "crypto/cursor": position, "crypto/rows_waiting": str(waiting)})
    version, metadata = observe(store)
    observation = dg.AssetObservation(asset_key=real_time_prices.key, metadata=metadata,
                                      tags={DATA_VERSION_TAG: version.value})
    return dg.SensorResult(run_requests=[request], cursor=str(closed_until), asset_events=[observation])
