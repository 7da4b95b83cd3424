-- 0006 published records never change; one function guards every append-only table.
-- Why: a version, once published, is what members were delivered and what the evidence's
-- accumulation figures count; and because a version's records never change, a rendered page of
-- versions up to N stays correct forever, which is what lets instances cache pages in memory
-- (gateway/page_cache.py). New versions add records; nothing updates, deletes or truncates them.
-- The function 0001 made for audit_events, which 0002 reused for checkpoints, named audit_events
-- whatever the table; append_only() names the table it guards and serves all three, and TRUNCATE,
-- which row triggers do not see, is refused as well.
-- Revises: 0001 (records, audit_events), 0002 (audit_checkpoints).

CREATE FUNCTION append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only (% refused)', TG_TABLE_NAME, TG_OP;
END $$;

DROP TRIGGER audit_events_no_update ON audit_events;
DROP TRIGGER audit_checkpoints_no_update ON audit_checkpoints;
DROP FUNCTION audit_events_append_only();

CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER records_no_update BEFORE UPDATE OR DELETE ON records
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER records_no_truncate BEFORE TRUNCATE ON records
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
