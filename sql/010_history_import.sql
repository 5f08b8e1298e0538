-- Bulk imports of Binance's public data files (python -m streaming_services.importer, make import).
-- One row per file: the position its committed rows reached, advanced in the same transaction as each
-- batch of rows, so an import stopped anywhere resumes there; the trade-time range the file spans, whose
-- candles of every interval the importer recomputes once the file is in.
-- status: loading (rows still coming) → loaded (all rows in, candles not yet recomputed) → complete.
-- Imported rows carry ingest_xid 0 in stock.real_time_prices: the candle cursors start above it, so the
-- sensor never reads a year of history as "new"; the importer's own backfill computes those candles.
CREATE TABLE stock.imported_files (
    file_name     TEXT        PRIMARY KEY,            -- base name, e.g. BTCUSDT-aggTrades-2024-08.zip
    sha256        TEXT        NOT NULL,
    symbol        VARCHAR(20) NOT NULL,
    rows_done     BIGINT      NOT NULL DEFAULT 0,     -- trades of the file, in file order, committed so far
    rows_new      BIGINT      NOT NULL DEFAULT 0,     -- of those, rows that were not in the table yet
    first_ms      BIGINT,                             -- trade-time range of the committed rows, epoch ms
    last_ms       BIGINT,
    status        TEXT        NOT NULL DEFAULT 'loading' CHECK (status IN ('loading', 'loaded', 'complete')),
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);
