"""The platform's one Dagster ``Definitions``: assets, their checks, the candle job, its sensor, resources."""

from __future__ import annotations

import dagster as dg

from crypto_assets.assets.intervals import CANDLE_ASSETS, CANDLE_CHECKS
from crypto_assets.assets.latest_prices import latest_prices, latest_prices_match_candles
from crypto_assets.assets.real_time_prices import real_time_prices, source_is_fresh
from crypto_assets.resources import build_resources
from crypto_assets.sensors import candles_job, minute_close_sensor

defs = dg.Definitions(
    assets=[real_time_prices, *CANDLE_ASSETS, latest_prices],
    asset_checks=[*CANDLE_CHECKS, latest_prices_match_candles, source_is_fresh],
    jobs=[candles_job],
    sensors=[minute_close_sensor],
    resources=build_resources(),
    # One process per run: the three Spark assets share one SparkSession instead of starting three JVMs.
    executor=dg.in_process_executor,
)
