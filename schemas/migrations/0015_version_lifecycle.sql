-- 0015 versions can be withdrawn, once and for good, and published as append or replace.
-- Why: issue 16 "Versions". A wrong version must leave every delivery path, yet what was published
-- and delivered stays in storage and in the evidence: a withdrawal only sets withdrawn_at and its
-- reason, once. Every other change to a version or its partition figures (an un-withdraw included)
-- is refused by the database, as records already are (0006). A replace version makes the dataset's
-- deliverable content exactly itself plus later appends (gateway/datasets.py `deliverable`).
-- The snapshot hears of a withdrawal like of any other change: the NOTIFY trigger now fires on UPDATE.
-- Revises: 0001 (dataset_versions, dataset_partitions, dataset_versions_notify), 0006 (append_only).

ALTER TABLE dataset_versions
    ADD COLUMN mode text NOT NULL DEFAULT 'append' CHECK (mode IN ('append', 'replace')),
    ADD COLUMN withdrawn_at timestamptz,
    ADD COLUMN withdrawal_reason text,
    ADD CONSTRAINT dataset_versions_withdrawal_has_reason
        CHECK ((withdrawn_at IS NULL) = (withdrawal_reason IS NULL)
               AND (withdrawal_reason IS NULL OR length(btrim(withdrawal_reason)) > 0));

-- The duplicate check looks up a dataset's versions by upload digest.
CREATE INDEX dataset_versions_upload_sha256 ON dataset_versions (dataset_id, upload_sha256);

CREATE FUNCTION dataset_versions_withdraw_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.withdrawn_at IS NULL AND NEW.withdrawn_at IS NOT NULL
       AND (NEW.dataset_id, NEW.version, NEW.records, NEW.bytes, NEW.upload_sha256, NEW.upload_format,
            NEW.published_at, NEW.mode)
           IS NOT DISTINCT FROM
           (OLD.dataset_id, OLD.version, OLD.records, OLD.bytes, OLD.upload_sha256, OLD.upload_format,
            OLD.published_at, OLD.mode) THEN
        RETURN NEW;
    END IF;
    RAISE EXCEPTION 'dataset_versions is append-only: a version can only be withdrawn, once (% refused)', TG_OP;
END $$;

CREATE TRIGGER dataset_versions_withdraw_only BEFORE UPDATE ON dataset_versions
    FOR EACH ROW EXECUTE FUNCTION dataset_versions_withdraw_only();
CREATE TRIGGER dataset_versions_no_delete BEFORE DELETE ON dataset_versions
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER dataset_versions_no_truncate BEFORE TRUNCATE ON dataset_versions
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER dataset_partitions_no_update BEFORE UPDATE OR DELETE ON dataset_partitions
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER dataset_partitions_no_truncate BEFORE TRUNCATE ON dataset_partitions
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();

DROP TRIGGER dataset_versions_notify ON dataset_versions;
CREATE TRIGGER dataset_versions_notify AFTER INSERT OR UPDATE ON dataset_versions
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('datasets', 'dataset_id');
