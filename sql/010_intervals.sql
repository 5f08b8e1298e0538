-- Candles of 15 minutes, 1 hour, 4 hours and 1 day (assets aggregated_15min, aggregated_1hour,
-- aggregated_4hour, aggregated_1day), rolled up from the 1-minute candles by Spark.
--
-- A rollup's avg_price (Σ price / n over the window's trades) cannot come from rounded 1-minute averages,
-- so every candle table keeps the exact sums it is derived from: price_sum (Σ price) and price_count (n),
-- 0 for an empty window. Rows that exist already get them from their trades here.
ALTER TABLE stock.aggregated_prices_1min ADD COLUMN price_sum NUMERIC(38, 8), ADD COLUMN price_count BIGINT;
ALTER TABLE stock.aggregated_prices_5min ADD COLUMN price_sum NUMERIC(38, 8), ADD COLUMN price_count BIGINT;
UPDATE stock.aggregated_prices_1min a SET (price_sum, price_count) = (
    SELECT coalesce(sum(r.price), 0), count(*) FROM stock.real_time_prices r
    WHERE r.symbol = a.symbol AND r.event_time >= a.window_start AND r.event_time < a.window_end);
UPDATE stock.aggregated_prices_5min a SET (price_sum, price_count) = (
    SELECT coalesce(sum(r.price), 0), count(*) FROM stock.real_time_prices r
    WHERE r.symbol = a.symbol AND r.event_time >= a.window_start AND r.event_time < a.window_end);

-- Same columns, keys and indexes as the 1-minute table; (symbol, window_start) answers a symbol's range.
CREATE TABLE stock.aggregated_prices_15min (LIKE stock.aggregated_prices_1min INCLUDING ALL);
CREATE TABLE stock.aggregated_prices_1hour (LIKE stock.aggregated_prices_1min INCLUDING ALL);
CREATE TABLE stock.aggregated_prices_4hour (LIKE stock.aggregated_prices_1min INCLUDING ALL);
CREATE TABLE stock.aggregated_prices_1day (LIKE stock.aggregated_prices_1min INCLUDING ALL);

-- The rollups read the 1-minute candles changed since their last run (the merge stamps updated_at).
CREATE INDEX aggregated_prices_1min_updated_at_idx ON stock.aggregated_prices_1min (updated_at);

-- Per rollup asset: the newest 1-minute updated_at it has read (every change at or before it is in).
CREATE TABLE stock.rollup_cursors (
    name              TEXT        PRIMARY KEY,
    minutes_read_upto TIMESTAMPTZ NOT NULL,
    updated_at        TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The candle runs (candle_writer, 008) write the rolled-up tables and their cursors.
GRANT SELECT, INSERT, UPDATE, DELETE ON stock.aggregated_prices_15min, stock.aggregated_prices_1hour,
    stock.aggregated_prices_4hour, stock.aggregated_prices_1day, stock.rollup_cursors TO candle_writer;
GRANT USAGE ON SEQUENCE stock.aggregated_prices_15min_id_seq, stock.aggregated_prices_1hour_id_seq,
    stock.aggregated_prices_4hour_id_seq, stock.aggregated_prices_1day_id_seq TO candle_writer;
