-- Where the consumer's writes reached in each Kafka partition, committed in the same transaction as the
-- trades and dead letters of the batch: every message of a partition below next_offset is in this database.
-- A point-in-time restore (make restore) brings this table back to the same instant as the trades, and the
-- consumer group is rewound to it, so Kafka delivers again exactly what the restored database lacks.
CREATE TABLE stock.consumer_offsets (
    topic       TEXT        NOT NULL,
    partition   INTEGER     NOT NULL,
    next_offset BIGINT      NOT NULL CHECK (next_offset >= 0),
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition)
);

GRANT SELECT, INSERT, UPDATE ON stock.consumer_offsets TO ingest_writer;
