"""The 60-second sensor: one candle run when new trades arrived, never two at once, never one tick twice."""

import dagster as dg

from crypto_assets.assets.aggregated_1min import aggregated_1min
from crypto_assets.assets.aggregated_5min import aggregated_5min
from crypto_assets.assets.common import PIPELINE_TAG
from crypto_assets.assets.latest_prices import latest_prices
from crypto_assets.candles import ONE_MINUTE
from crypto_assets.resources import MarketDatabase

IN_FLIGHT = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING,
             dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.CANCELING]

candles_job = dg.define_asset_job(
    "candles_job",
    selection=dg.AssetSelection.assets(aggregated_1min, aggregated_5min, latest_prices),
    description="Candles of the trades since the last run, then latest prices; checks run after each asset.",
    tags={PIPELINE_TAG: "candles"},
    executor_def=dg.in_process_executor,
)


@dg.sensor(job=candles_job, minimum_interval_seconds=60, default_status=dg.DefaultSensorStatus.RUNNING)
def new_trades_sensor(context: dg.SensorEvaluationContext, market_db: MarketDatabase) -> dg.RunRequest | dg.SkipReason:
    """Requests a run when rows past the candle cursor exist and no candle run is queued or running.

    The run key names the cursor and the rows waiting past it, so a tick that sees nothing new since the
    last request repeats its key and Dagster does not launch it again. The queued run coordinator's tag
    limit (dagster.yaml) keeps runs started elsewhere (UI, backfill) from overlapping as well.
    """
    in_flight = context.instance.get_run_records(
        filters=dg.RunsFilter(statuses=IN_FLIGHT, tags={PIPELINE_TAG: "candles"}), limit=1)
    if in_flight:
        return dg.SkipReason(f"candle run {in_flight[0].dagster_run.run_id} is still in flight")
    position, waiting, newest_xid = market_db.store().pending_trades(ONE_MINUTE)
    if waiting == 0:
        return dg.SkipReason(f"no new trades past cursor {position}")
    return dg.RunRequest(run_key=f"trades-{position}-{newest_xid}-{waiting}",
                         tags={"crypto/cursor": position, "crypto/rows_waiting": str(waiting)})
