"""The platform's one Dagster ``Definitions``: assets, their checks, the candle job, its sensor, resources."""

from __future__ import annotations

import dagster as dg

from crypto_assets.assets.aggregated_1min import aggregated_1min, aggregated_1min_checks
from crypto_assets.assets.aggregated_5min import aggregated_5min, aggregated_5min_checks
from crypto_assets.assets.latest_prices import latest_prices, latest_prices_match_candles
from crypto_assets.assets.real_time_prices import real_time_prices, source_is_fresh
from crypto_assets.resources import build_resources
from crypto_assets.sensors import candles_job, minute_close_sensor

defs = dg.Definitions(
    assets=[real_time_prices, aggregated_1min, aggregated_5min, latest_prices],
    asset_checks=[*aggregated_1min_checks, *aggregated_5min_checks, latest_prices_match_candles, source_is_fresh],
    jobs=[candles_job],
    sensors=[minute_close_sensor],
    resources=build_resources(),
    # One process per run: the three Spark assets share one SparkSession instead of starting three JVMs.
    executor=dg.in_process_executor,
)
