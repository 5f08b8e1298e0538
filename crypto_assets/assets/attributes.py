"""How the candle assets show and are judged in Dagster: their group, kinds, run tag and freshness policy."""

from datetime import timedelta

import dagster as dg

GROUP = "market_candles"
KINDS = {"spark", "postgres"}
PIPELINE_TAG = "crypto/pipeline"
CANDLE_FRESHNESS = dg.FreshnessPolicy.time_window(fail_window=timedelta(minutes=5), warn_window=timedelta(minutes=2))
