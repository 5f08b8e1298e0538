-- Bounded raw storage (issue 17): stock.real_time_prices partitioned by trade time, one partition per UTC day
-- (stock.real_time_prices_pYYYYMMDD, [00:00, 24:00) UTC), created a week ahead and on demand for older days
-- (history imports, replays of old days), and dropped whole once older than RAW_RETENTION_DAYS: a DROP TABLE,
-- never a DELETE scan. The candle tables are not partitioned and keep every window.
--
-- The idempotency key across partitions. A unique index on a partitioned table must contain the partition
-- key (each partition enforces it alone), so UNIQUE (symbol, agg_trade_id) becomes
-- UNIQUE (symbol, agg_trade_id, event_time). (symbol, agg_trade_id) stays unique in practice because the
-- partition key is a function of the trade itself: event_time is the instant of the trade's own Binance time
-- T (the `timestamp` column), which Binance never changes for an aggregate id. Whatever delivers a trade
-- again (Kafka re-read after a crash or a rebalance, a REST gap backfill overlapping the stream, a file
-- imported twice or over what the stream wrote) carries the same T, so the same event_time: it is routed
-- to the same partition and meets the same index entry. Hence the writers' ON CONFLICT names the three
-- columns and still ignores it:
--   - the consumer (streaming_services/postgres_sink.py) COPYs a batch straight in and, when COPY meets a
--     stored row, merges through its staging table with ON CONFLICT (symbol, agg_trade_id, event_time)
--     DO NOTHING; before that, its admission (admission.py) looks every id at or below the symbol's newest
--     up by (symbol, agg_trade_id) alone, across every partition, under the symbol's lock: the same id with
--     another content, another time included, is a conflicting duplicate and is dead-lettered, never stored;
--   - the importer (streaming_services/importer.py) merges with the same ON CONFLICT; it writes Binance's
--     own files (checksums verified), whose T for an id is the stream's.
-- The one thing the index alone no longer refuses, the same id at another time, is thus never offered to it.
--
-- Who keeps the partitions: stock.ensure_raw_partitions(days) creates the days a writer is about to write
-- (the consumer per batch, the importer per batch); stock.maintain_raw_partitions() creates today and the
-- next 7 days and applies the retention the administrator set in stock.raw_storage (RAW_RETENTION_DAYS,
-- written at every `make up`). Both run as their owner (SECURITY DEFINER, the administrator): run-time roles
-- may call them but own nothing and choose nothing: the days created are bounded to the trades' valid range,
-- and what is dropped is the administrator's setting. A day is dropped once it is more than
-- RAW_RETENTION_DAYS old AND its partition was created more than RAW_RETENTION_DAYS ago: history imported
-- (or migrated here) today stays that long too, so its candles are computed and can be backfilled first.

-- The administrator's setting (one row; none = nothing is dropped).
CREATE TABLE stock.raw_storage (
    only_row       BOOLEAN     PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    retention_days INTEGER     NOT NULL CHECK (retention_days >= 1),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- One row per day that has (or had) a partition: when it was created, when retention dropped it. A backfill
-- refuses a range with dropped days (crypto_assets/backfill.py): it would replace their candles by empty ones.
CREATE TABLE stock.raw_partitions (
    day        DATE        PRIMARY KEY,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    dropped_at TIMESTAMPTZ
);

-- The table as it was steps aside (its index names are schema-wide); its id sequence stays and moves over.
ALTER TABLE stock.real_time_prices RENAME TO real_time_prices_unpartitioned;
ALTER TABLE stock.real_time_prices_unpartitioned RENAME CONSTRAINT real_time_prices_pkey
    TO real_time_prices_unpartitioned_pkey;
ALTER TABLE stock.real_time_prices_unpartitioned RENAME CONSTRAINT real_time_prices_symbol_agg_trade_id_key
    TO real_time_prices_unpartitioned_key;
ALTER INDEX stock.real_time_prices_event_time_idx RENAME TO real_time_prices_unpartitioned_event_time_idx;
ALTER INDEX stock.real_time_prices_symbol_event_time_idx RENAME TO real_time_prices_unpartitioned_symbol_idx;
ALTER INDEX stock.real_time_prices_ingest_xid_idx RENAME TO real_time_prices_unpartitioned_ingest_xid_idx;
ALTER SEQUENCE stock.real_time_prices_id_seq OWNED BY NONE;

-- The same columns, defaults and checks (LIKE the table as it was); the keys gain the partition key (see above).
CREATE TABLE stock.real_time_prices (
    LIKE stock.real_time_prices_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS,
    CONSTRAINT real_time_prices_pkey PRIMARY KEY (id, event_time),
    CONSTRAINT real_time_prices_trade_key UNIQUE (symbol, agg_trade_id, event_time)
) PARTITION BY RANGE (event_time);
ALTER SEQUENCE stock.real_time_prices_id_seq OWNED BY stock.real_time_prices.id;
CREATE INDEX real_time_prices_event_time_idx ON stock.real_time_prices (event_time);
CREATE INDEX real_time_prices_symbol_event_time_idx ON stock.real_time_prices (symbol, event_time DESC);
CREATE INDEX real_time_prices_ingest_xid_idx ON stock.real_time_prices (ingest_xid);

-- The partitions of `days` that do not exist yet, created; returns how many. Days are UTC dates from the
-- first Binance trade the platform accepts (2017-07-01, messages.EARLIEST_TRADE_MS) to 8 days ahead.
CREATE FUNCTION stock.ensure_raw_partitions(days DATE[]) RETURNS INTEGER
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET TimeZone = 'UTC'
SET DateStyle = 'ISO, YMD' AS $$
DECLARE
    wanted DATE;
    part TEXT;
    made INTEGER := 0;
BEGIN
    FOR wanted IN SELECT DISTINCT d FROM unnest(days) AS u(d) WHERE d IS NOT NULL ORDER BY 1 LOOP
        IF wanted < DATE '2017-07-01' OR wanted > (now() AT TIME ZONE 'UTC')::date + 8 THEN
            RAISE EXCEPTION 'no partition of stock.real_time_prices for %: trades are from 2017-07-01 to 8 days ahead',
                wanted USING ERRCODE = 'invalid_parameter_value';
        END IF;
        part := 'real_time_prices_p' || to_char(wanted, 'YYYYMMDD');
        CONTINUE WHEN to_regclass('stock.' || part) IS NOT NULL;
        -- Two writers creating the same day take turns; the second finds it made.
        PERFORM pg_advisory_xact_lock(7420313);
        CONTINUE WHEN to_regclass('stock.' || part) IS NOT NULL;
        EXECUTE format('CREATE TABLE stock.%I PARTITION OF stock.real_time_prices FOR VALUES FROM (%L) TO (%L)',
                       part, wanted::timestamp AT TIME ZONE 'UTC', (wanted + 1)::timestamp AT TIME ZONE 'UTC');
        INSERT INTO stock.raw_partitions (day) VALUES (wanted)
            ON CONFLICT (day) DO UPDATE SET created_at = now(), dropped_at = NULL;
        made := made + 1;
    END LOOP;
    RETURN made;
END
$$;

-- Today and the next 7 days created, then the days past retention dropped. Locks are waited for 5 s at most
-- (creating or dropping a partition locks the whole table briefly): what could not be done is counted in
-- `busy` and done by the next call.
CREATE FUNCTION stock.maintain_raw_partitions(OUT created INTEGER, OUT dropped INTEGER, OUT busy INTEGER)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp SET lock_timeout = '5s' AS $$
DECLARE
    today DATE := (now() AT TIME ZONE 'UTC')::date;
    keep INTEGER;
    expired DATE;
BEGIN
    created := 0;
    dropped := 0;
    busy := 0;
    BEGIN
        created := stock.ensure_raw_partitions(ARRAY(SELECT today + n FROM generate_series(0, 7) AS g(n)));
    EXCEPTION WHEN lock_not_available THEN
        busy := busy + 1;
    END;
    -- Partitions without a row here (the table emptied by hand) count as created now.
    INSERT INTO stock.raw_partitions (day)
    SELECT to_date(right(c.relname, 8), 'YYYYMMDD') FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
    WHERE i.inhparent = 'stock.real_time_prices'::regclass
    ON CONFLICT (day) DO NOTHING;
    SELECT retention_days INTO keep FROM stock.raw_storage;
    IF keep IS NULL THEN
        RETURN;
    END IF;
    FOR expired IN SELECT day FROM stock.raw_partitions
               WHERE dropped_at IS NULL AND day < today - keep AND created_at < now() - make_interval(days => keep)
               ORDER BY day LOOP
        BEGIN
            EXECUTE format('DROP TABLE IF EXISTS stock.%I', 'real_time_prices_p' || to_char(expired, 'YYYYMMDD'));
            UPDATE stock.raw_partitions SET dropped_at = now() WHERE day = expired;
            dropped := dropped + 1;
        EXCEPTION WHEN lock_not_available THEN
            busy := busy + 1;
        END;
    END LOOP;
END
$$;

-- The newest and the oldest trade time, max(event_time) and min(event_time) of the table, read partition by
-- partition from the newest (the oldest) one: an aggregate over the parent opens every partition's index
-- (planning and locking 38 partitions at the default retention: 1 to 2.6 ms instead of 0.1 ms). The newest
-- trade is in tomorrow's or today's partition (trades are at most a day ahead of the clock,
-- messages.MAX_CLOCK_SKEW_MS); while both are empty, the whole table is asked. Used by the freshness check,
-- the sensor's observation, the Superset freshness dataset and alerts, and `make status`.
CREATE FUNCTION stock.newest_trade_time() RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    tomorrow DATE := (now() AT TIME ZONE 'UTC')::date + 1;
    part REGCLASS;
    newest TIMESTAMPTZ;
BEGIN
    FOR n IN 0..1 LOOP
        part := to_regclass('stock.real_time_prices_p' || to_char(tomorrow - n, 'YYYYMMDD'));
        CONTINUE WHEN part IS NULL;
        EXECUTE format('SELECT max(event_time) FROM %s', part) INTO newest;
        IF newest IS NOT NULL THEN
            RETURN newest;
        END IF;
    END LOOP;
    RETURN (SELECT max(event_time) FROM stock.real_time_prices);
END
$$;

CREATE FUNCTION stock.oldest_trade_time() RETURNS TIMESTAMPTZ
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    part REGCLASS;
    oldest TIMESTAMPTZ;
BEGIN
    FOR part IN SELECT c.oid::regclass FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'stock.real_time_prices'::regclass ORDER BY c.relname LOOP
        EXECUTE format('SELECT min(event_time) FROM %s', part) INTO oldest;
        IF oldest IS NOT NULL THEN
            RETURN oldest;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;

-- The rows as they were, ids and writer xids kept (the candle cursors compare ingest_xid), into the days'
-- partitions. Their partitions count as created now: nothing is dropped by the upgrade itself.
SELECT stock.ensure_raw_partitions(ARRAY(
    SELECT DISTINCT (event_time AT TIME ZONE 'UTC')::date FROM stock.real_time_prices_unpartitioned));
INSERT INTO stock.real_time_prices (id, symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id,
                                    last_trade_id, trades, is_buyer_maker, source, created_at, ingest_xid)
SELECT id, symbol, price, timestamp, event_time, volume, agg_trade_id, first_trade_id, last_trade_id, trades,
       is_buyer_maker, source, created_at, ingest_xid
FROM stock.real_time_prices_unpartitioned;
DROP TABLE stock.real_time_prices_unpartitioned;
-- Nothing ahead yet: the first maintenance (`make up`) creates the week ahead before any service starts.

-- Privileges of 008/011 on the new table (the parent: rows routed to a partition are checked there; the
-- partitions are the administrator's and readable by superset_reader through 003's default privileges).
-- ON CONFLICT now names event_time too, so ingest_writer reads it as well.
GRANT INSERT ON stock.real_time_prices TO ingest_writer;
GRANT SELECT (symbol, agg_trade_id, event_time, price, volume, "timestamp", first_trade_id, last_trade_id,
              is_buyer_maker, source) ON stock.real_time_prices TO ingest_writer;
GRANT SELECT ON stock.real_time_prices TO candle_writer, superset_reader;
GRANT SELECT ON stock.raw_partitions TO candle_writer;
GRANT SELECT (day, dropped_at) ON stock.raw_partitions TO ingest_writer;  -- days retention dropped: not written back
REVOKE EXECUTE ON FUNCTION stock.ensure_raw_partitions(DATE[]), stock.maintain_raw_partitions(),
    stock.newest_trade_time(), stock.oldest_trade_time() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION stock.ensure_raw_partitions(DATE[]), stock.maintain_raw_partitions() TO ingest_writer;
GRANT EXECUTE ON FUNCTION stock.newest_trade_time(), stock.oldest_trade_time() TO candle_writer, superset_reader;
