-- What the Dagster candle assets need beside the market data: an ingestion cursor per asset, staging
-- tables that Spark's JDBC writer appends to (it cannot upsert), and an index for "rows since the cursor".

-- Rows committed since a cursor are found by their writer's transaction id (see real_time_prices.ingest_xid).
CREATE INDEX real_time_prices_ingest_xid_idx ON stock.real_time_prices (ingest_xid);

-- One row per incremental asset: every row with ingest_xid >= this value may still be unread.
-- Advanced in the same transaction as the merge of the candles computed from those rows.
CREATE TABLE stock.candle_cursors (
    name          TEXT        PRIMARY KEY,
    ingest_xid    XID8        NOT NULL,
    watermark_ms  BIGINT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Candles as Spark computed them (exact sums; the merge derives avg_price and vwap), one batch per run.
CREATE UNLOGGED TABLE stock.candle_staging (
    batch_id           TEXT           NOT NULL,
    symbol             VARCHAR(20)    NOT NULL,
    window_start_ms    BIGINT         NOT NULL,
    open_price         NUMERIC(20, 8) NOT NULL,
    close_price        NUMERIC(20, 8) NOT NULL,
    high_price         NUMERIC(20, 8) NOT NULL,
    low_price          NUMERIC(20, 8) NOT NULL,
    price_sum          NUMERIC(38, 8) NOT NULL,
    price_count        BIGINT         NOT NULL,
    total_volume       NUMERIC(28, 8) NOT NULL,
    quote_volume       NUMERIC(38, 16) NOT NULL,
    taker_buy_volume   NUMERIC(28, 8) NOT NULL,
    trade_count        BIGINT         NOT NULL,
    first_agg_trade_id BIGINT,
    last_agg_trade_id  BIGINT,
    is_final           BOOLEAN        NOT NULL
);
CREATE INDEX candle_staging_batch_id_idx ON stock.candle_staging (batch_id);

-- The next latest_prices set as Spark computed it; published in one transaction.
CREATE UNLOGGED TABLE stock.latest_prices_staging (
    batch_id           TEXT           NOT NULL,
    symbol             VARCHAR(20)    NOT NULL,
    price              NUMERIC(20, 8) NOT NULL,
    event_time_ms      BIGINT         NOT NULL,
    agg_trade_id       BIGINT         NOT NULL,
    price_24h_ago      NUMERIC(20, 8),
    high_24h           NUMERIC(20, 8),
    low_24h            NUMERIC(20, 8),
    volume_24h         NUMERIC(28, 8),
    quote_volume_24h   NUMERIC(38, 16),
    trade_count_24h    BIGINT
);
CREATE INDEX latest_prices_staging_batch_id_idx ON stock.latest_prices_staging (batch_id);
