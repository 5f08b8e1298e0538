-- When each candle first became final: the window-close -> final delay that `make status`, the Pipeline
-- health dashboard and bench.freshness show (issue 11). Set by a trigger, so every writer (incremental
-- merge, backfill) stamps it the same way: the first write with is_final = true stamps the moment;
-- recomputes of a final window (late trades) keep it. clock_timestamp() is the row's write, a moment
-- before its transaction commits and readers see it.
ALTER TABLE stock.aggregated_prices_1min ADD COLUMN finalized_at TIMESTAMPTZ;
ALTER TABLE stock.aggregated_prices_5min ADD COLUMN finalized_at TIMESTAMPTZ;

CREATE FUNCTION stock.stamp_finalized_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' AND OLD.is_final THEN
        NEW.finalized_at := OLD.finalized_at;
    ELSIF NEW.is_final THEN
        NEW.finalized_at := clock_timestamp();
    ELSE
        NEW.finalized_at := NULL;
    END IF;
    RETURN NEW;
END
$$;

CREATE TRIGGER aggregated_prices_1min_finalized_at BEFORE INSERT OR UPDATE ON stock.aggregated_prices_1min
    FOR EACH ROW EXECUTE FUNCTION stock.stamp_finalized_at();
CREATE TRIGGER aggregated_prices_5min_finalized_at BEFORE INSERT OR UPDATE ON stock.aggregated_prices_5min
    FOR EACH ROW EXECUTE FUNCTION stock.stamp_finalized_at();
