-- Least privilege: one login role per job; none is a superuser or owns a market table. The administrator
-- (PG_USER) that runs these migrations owns the schema and is never used by a service at run time.
-- Roles are cluster-wide: created here when missing, NOLOGIN and without a password; the local stack
-- (local_stack/roles.py) or the deployment gives each LOGIN and a password, never written in a SQL file.
--   ingest_writer  the Kafka consumer: appends trades and dead letters
--   candle_writer  the candle assets (Dagster runs, backfills, Spark JDBC): reads trades, writes candles
--   dagster        Dagster's run/event storage: owns its own database only (granted by local_stack/roles.py)
--   superset_meta  Superset's metadata: owns its own database only (idem)
--   superset_reader  Superset's queries (003): reads stock, read-only transactions, bounded statements
-- A table added later grants its writer explicitly in its own migration (no default write privileges).
DO $$
DECLARE
    role_name TEXT;
BEGIN
    FOREACH role_name IN ARRAY ARRAY['ingest_writer', 'candle_writer', 'dagster', 'superset_meta'] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT', role_name);
        END IF;
    END LOOP;
    -- Only the platform's roles connect to the market database; only the consumer makes temporary tables.
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO ingest_writer, candle_writer, superset_reader', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO ingest_writer', current_database());
END
$$;

REVOKE ALL ON SCHEMA stock FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA stock TO ingest_writer, candle_writer;

-- The consumer: COPY/INSERT … ON CONFLICT DO NOTHING into trades (through its temporary staging table
-- when a batch repeats rows) and dead letters. ON CONFLICT needs SELECT on the conflict key's columns,
-- and only those: no other column, no UPDATE or DELETE on anything.
GRANT INSERT ON stock.real_time_prices, stock.rejected_messages TO ingest_writer;
GRANT SELECT (symbol, agg_trade_id) ON stock.real_time_prices TO ingest_writer;
GRANT SELECT (topic, partition, "offset") ON stock.rejected_messages TO ingest_writer;
GRANT USAGE ON SEQUENCE stock.real_time_prices_id_seq, stock.rejected_messages_id_seq TO ingest_writer;

-- The candle runs: read trades, write the candle tables, their staging tables, latest_prices and the cursor.
GRANT SELECT ON stock.real_time_prices TO candle_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON stock.aggregated_prices_1min, stock.aggregated_prices_5min,
    stock.latest_prices, stock.candle_cursors, stock.candle_staging, stock.latest_prices_staging TO candle_writer;
GRANT USAGE ON SEQUENCE stock.aggregated_prices_1min_id_seq, stock.aggregated_prices_5min_id_seq TO candle_writer;

-- The exchange's clock (003): the consumer keeps it, the candle runs read it to know what is final.
GRANT SELECT, INSERT, UPDATE ON stock.market_clock TO ingest_writer;
GRANT SELECT ON stock.market_clock TO candle_writer;

-- Superset's queries end (SQL Lab's own limit is 60 s) and never sit idle inside a transaction.
ALTER ROLE superset_reader SET statement_timeout = '60s';
ALTER ROLE superset_reader SET idle_in_transaction_session_timeout = '60s';

-- Advisory locks serialise the candle writers (crypto_assets/store.py); by default any role may take them,
-- so a SQL Lab user could hold the candle lock and stall every run. Only candle_writer may now.
REVOKE EXECUTE ON FUNCTION
    pg_advisory_lock(bigint), pg_advisory_lock(integer, integer),
    pg_advisory_lock_shared(bigint), pg_advisory_lock_shared(integer, integer),
    pg_try_advisory_lock(bigint), pg_try_advisory_lock(integer, integer),
    pg_try_advisory_lock_shared(bigint), pg_try_advisory_lock_shared(integer, integer),
    pg_advisory_xact_lock(bigint), pg_advisory_xact_lock(integer, integer),
    pg_advisory_xact_lock_shared(bigint), pg_advisory_xact_lock_shared(integer, integer),
    pg_try_advisory_xact_lock(bigint), pg_try_advisory_xact_lock(integer, integer),
    pg_try_advisory_xact_lock_shared(bigint), pg_try_advisory_xact_lock_shared(integer, integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    pg_advisory_lock(bigint), pg_advisory_lock(integer, integer),
    pg_advisory_lock_shared(bigint), pg_advisory_lock_shared(integer, integer),
    pg_try_advisory_lock(bigint), pg_try_advisory_lock(integer, integer),
    pg_try_advisory_lock_shared(bigint), pg_try_advisory_lock_shared(integer, integer),
    pg_advisory_xact_lock(bigint), pg_advisory_xact_lock(integer, integer),
    pg_advisory_xact_lock_shared(bigint), pg_advisory_xact_lock_shared(integer, integer),
    pg_try_advisory_xact_lock(bigint), pg_try_advisory_xact_lock(integer, integer),
    pg_try_advisory_xact_lock_shared(bigint), pg_try_advisory_xact_lock_shared(integer, integer)
TO candle_writer;
