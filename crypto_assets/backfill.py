"""Recompute every candle of a time range from scratch, e.g. after replaying a historical day.

``python -m crypto_assets.backfill --start 2024-08-08T23:00:00Z --end 2024-08-09T01:00:00Z``

Runs the candle assets of every interval in backfill mode (the range widened to whole windows of each: its
candles deleted and recomputed, from the trades or the one-minute candles, in one transaction per table),
then latest_prices and every check, as one Dagster run: in the instance of ``DAGSTER_HOME`` when set (it
shows in the UI), else in a temporary one. The tables' advisory locks keep it from overlapping a
sensor-driven run. A range holding days whose raw trades retention dropped (``RAW_RETENTION_DAYS``) is
refused: their candles stay. Spark's JVM ends with this process. Exit 0 on success, 1 when the run or a
check failed, 2 on bad input (one line on stderr).
"""

import argparse
import os
import socket
import sys
import warnings
from urllib.parse import urlsplit

import dagster as dg

# The CLI's output is its summary lines; Dagster's beta notice (observable_source_asset) is noise here.
with warnings.catch_warnings():
    warnings.simplefilter("ignore", dg.BetaWarning)
    from crypto_assets.assets.attributes import PIPELINE_TAG
    from crypto_assets.assets.catalog import CANDLE_ASSETS, DEFINITIONS, RUN_ASSETS
    from crypto_assets.assets.run_config import CandleRunConfig, parse_range
    from crypto_assets.candles import to_ms
    from crypto_assets.resources import build_resources
from crypto_platform.credentials import CANDLE_WRITER, role_database_url
from crypto_platform.raw_partitions import dropped_days
from crypto_platform.settings import PlatformSettings, SettingsError


class _OneLineParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        raise SystemExit(_fail(message))


def _fail(message: str) -> int:
    print(f"backfill: {message}", file=sys.stderr)
    return 2


def _answers(spark_remote: str, timeout_s: float = 5.0) -> bool:
    """Whether the Connect server's port accepts a connection (PySpark's client would retry for minutes)."""
    # Imported here: the Connect client (grpc) costs 0.8 s to import, which the in-process path never needs.
    from pyspark.sql.connect.client.core import DefaultChannelBuilder

    url = urlsplit(spark_remote)
    try:
        address = (url.hostname, url.port or DefaultChannelBuilder.default_port())
        socket.create_connection(address, timeout=timeout_s).close()
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = _OneLineParser(prog="python -m crypto_assets.backfill", description=__doc__.splitlines()[0])
    parser.add_argument("--start", required=True, help="ISO-8601 with a zone, e.g. 2024-08-08T23:00:00Z")
    parser.add_argument("--end", required=True, help="ISO-8601 with a zone, exclusive")
    args = parser.parse_args(argv)
    try:
        start, end = parse_range(args.start, args.end)
        settings = PlatformSettings.from_env()
    except (ValueError, SettingsError) as error:
        return _fail(str(error))
    if settings.spark_remote and not _answers(settings.spark_remote):
        print(f"backfill: Spark Connect at SPARK_REMOTE={settings.spark_remote} does not answer; start it with"
              " `make up`, or set SPARK_REMOTE= to run Spark in this process", file=sys.stderr)
        return 1
    # Recomputed from trades that retention dropped, those days' candles would become empty ones.
    dropped = dropped_days(role_database_url(settings, CANDLE_WRITER), to_ms(start), to_ms(end) - 1)
    if dropped:
        return _fail(f"the raw trades of {dropped[0]} to {dropped[-1]} were dropped (RAW_RETENTION_DAYS="
                     f"{settings.raw_retention_days}); their candles stay as they are")
    config = CandleRunConfig(start=args.start, end=args.end)
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        DEFINITIONS,
        selection=dg.AssetSelection.assets(*RUN_ASSETS),
        resources=build_resources(settings),
        run_config=dg.RunConfig(ops={asset.node_def.name: config for asset in CANDLE_ASSETS}),
        instance=instance,
        tags={PIPELINE_TAG: "backfill", "crypto/backfill": f"{args.start}/{args.end}"},
        raise_on_error=False,
    )
    for event in result.get_asset_materialization_events():
        metadata = event.step_materialization_data.materialization.metadata
        written = metadata.get("windows_written")
        print(f"backfill: {event.asset_key.to_user_string()} windows_written={written.value if written else 0}")
    failed = [c for c in result.get_asset_check_evaluations() if not c.passed]
    for check in failed:
        print(f"backfill: check {check.asset_key.to_user_string()}.{check.check_name} failed", file=sys.stderr)
    return 0 if result.success and not failed else 1


if __name__ == "__main__":
    sys.exit(main())
