-- The exchange's clock per (source, symbol), written by the Kafka consumer from the producer's marketClock
-- messages (streaming_services/messages.py), in the same transaction as the trades before it.
-- Invariant: every trade of `symbol` from `source` with timestamp < closed_until_ms is in
-- stock.real_time_prices (the producer sends the message only once every trade up to the closing
-- kline's last trade id is acknowledged). The consumer keeps the greatest value; it never goes back.
CREATE TABLE stock.market_clock (
    source           TEXT        NOT NULL,
    symbol           TEXT        NOT NULL,
    closed_until_ms  BIGINT      NOT NULL,
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source, symbol)
);
