"""The platform's one Dagster ``Definitions``: assets, their checks, the candle job, its sensor, resources."""

from __future__ import annotations

import dagster as dg

from crypto_assets.assets.catalog import ASSETS, CHECKS
from crypto_assets.resources import build_resources
from crypto_assets.sensors import candles_job, minute_close_sensor

defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[candles_job],
    sensors=[minute_close_sensor],
    resources=build_resources(),
    # One process per run: the three Spark assets share one SparkSession instead of starting three JVMs.
    executor=dg.in_process_executor,
)
