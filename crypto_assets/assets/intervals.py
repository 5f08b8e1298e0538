"""The candle assets of every interval (``candles.TIMEFRAMES``, in that order) and their checks: the one list
the Definitions, the candle job, the backfill CLI and the tests share."""

from crypto_assets.assets.aggregated_1min import aggregated_1min, aggregated_1min_checks
from crypto_assets.assets.aggregated_5min import aggregated_5min, aggregated_5min_checks
from crypto_assets.assets.rollups import ROLLUP_ASSETS, ROLLUP_CHECKS

CANDLE_ASSETS = [aggregated_1min, aggregated_5min, *ROLLUP_ASSETS]
CANDLE_CHECKS = [*aggregated_1min_checks, *aggregated_5min_checks, *ROLLUP_CHECKS]
