-- The consumer's admission (streaming_services/admission.py) judges each batch against the stored trades of
-- its symbols: it reads their content (to tell a re-read from a conflicting duplicate) under a per-symbol
-- transaction lock. The lock lives in the two-key advisory space; the candle lock (crypto_assets/store.py)
-- is a one-key lock, which ingest_writer still cannot take (sql/008).
GRANT SELECT (price, volume, "timestamp", first_trade_id, last_trade_id, is_buyer_maker, source)
    ON stock.real_time_prices TO ingest_writer;
GRANT EXECUTE ON FUNCTION pg_advisory_xact_lock(integer, integer) TO ingest_writer;
