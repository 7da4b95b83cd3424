-- 0006 published records never change.
-- Why: a version, once published, is what members were delivered and what the evidence's
-- accumulation figures count; and because a version's records never change, a rendered page of
-- versions up to N stays correct forever, which is what lets instances cache pages in memory
-- (gateway/page_cache.py). New versions add records; nothing updates, deletes or truncates them.
-- Revises: 0001 (records).

CREATE FUNCTION records_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'records are append-only: a published version never changes (% refused)', TG_OP;
END $$;
CREATE TRIGGER records_no_update BEFORE UPDATE OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION records_append_only();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION records_append_only();
