-- Dead letters keep at most the first DEAD_LETTER_MAX_BYTES of a payload (a flood of huge messages cannot
-- fill the disk), with the payload's full length and SHA-256: a stored prefix stays identifiable, and the
-- original can be matched in Kafka or elsewhere.
ALTER TABLE stock.rejected_messages
    ADD COLUMN payload_bytes  BIGINT,
    ADD COLUMN payload_sha256 BYTEA;

UPDATE stock.rejected_messages
   SET payload_bytes = octet_length(raw_payload), payload_sha256 = sha256(raw_payload);

-- A writer that stores the whole payload need not compute them: they are derived from what it stored.
CREATE FUNCTION stock.rejected_messages_whole_payload() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.payload_bytes := coalesce(NEW.payload_bytes, octet_length(NEW.raw_payload));
    NEW.payload_sha256 := coalesce(NEW.payload_sha256, sha256(NEW.raw_payload));
    RETURN NEW;
END
$$;
CREATE TRIGGER rejected_messages_whole_payload BEFORE INSERT ON stock.rejected_messages
    FOR EACH ROW EXECUTE FUNCTION stock.rejected_messages_whole_payload();

ALTER TABLE stock.rejected_messages
    ALTER COLUMN payload_bytes SET NOT NULL,
    ALTER COLUMN payload_sha256 SET NOT NULL,
    ADD CONSTRAINT rejected_messages_payload_prefix_check
        CHECK (octet_length(raw_payload) <= payload_bytes AND octet_length(payload_sha256) = 32);
