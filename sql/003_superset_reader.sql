-- superset_reader: the role Superset queries market data with. It can only read schema stock.
-- Created NOLOGIN without a password: the local stack (or the deployment) grants LOGIN with a password
-- taken from the environment (SUPERSET_READER_PASSWORD), so no password is ever written in a SQL file.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'superset_reader') THEN
        CREATE ROLE superset_reader NOLOGIN;
    END IF;
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO superset_reader', current_database());
END
$$;

-- Even a statement Superset lets through (SQL Lab, a virtual dataset) runs in a read-only transaction.
ALTER ROLE superset_reader SET default_transaction_read_only = on;

GRANT USAGE ON SCHEMA stock TO superset_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA stock TO superset_reader;
-- Tables the platform's owner role creates later in stock (new migrations, Dagster assets) are readable too.
ALTER DEFAULT PRIVILEGES IN SCHEMA stock GRANT SELECT ON TABLES TO superset_reader;
