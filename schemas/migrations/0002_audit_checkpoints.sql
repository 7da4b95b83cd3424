-- 0002 audit checkpoints: signing keys, the registry of audit logs, their signed checkpoints, and monthly
-- partitions of audit_events.
-- Why: issue 4 "Verifiable audit evidence". A log's events are only evidence once a signed checkpoint
-- (C2SP tlog-checkpoint) commits to them; see schemas/audit-format.md.
-- Revises: 0001_foundation (audit_events gets monthly partitions instead of its single DEFAULT one).

-- Signing keys of the keyring (gateway/signing_keys.py). The private half is sealed under the master
-- key with the context "signing-key:<key_id>", so a row copied elsewhere does not open. A key is
-- current while not_after is NULL; rotation sets not_after and the key keeps verifying what it
-- signed before then. retired_at marks a key withdrawn from use altogether (e.g. compromised).
CREATE TABLE signing_keys (
    key_id         text PRIMARY KEY CHECK (key_id ~ '^[0-9a-f]{16}$'),
    purpose        text NOT NULL CHECK (purpose IN ('audit', 'jwt')),
    algorithm      text NOT NULL DEFAULT 'Ed25519' CHECK (algorithm = 'Ed25519'),
    public_key     bytea NOT NULL CHECK (length(public_key) = 32),
    sealed_private bytea NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    not_before     timestamptz NOT NULL,
    not_after      timestamptz,
    retired_at     timestamptz,
    CHECK (not_after IS NULL OR not_after >= not_before)
);
-- One current key per purpose, whatever a buggy or concurrent caller tries.
CREATE UNIQUE INDEX signing_keys_one_current ON signing_keys (purpose) WHERE not_after IS NULL;

-- One row per writer process: its log's id, the instance that ran it and when it started.
CREATE TABLE audit_logs (
    log_id     text PRIMARY KEY,
    instance   text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT now()
);

-- Signed checkpoints: `note` is the complete signed note; tree_size and root_hash repeat its text
-- for queries. signed_at is the database clock when signing, also signed inside the note.
CREATE TABLE audit_checkpoints (
    log_id    text NOT NULL REFERENCES audit_logs,
    tree_size bigint NOT NULL CHECK (tree_size > 0),
    root_hash bytea NOT NULL CHECK (length(root_hash) = 32),
    note      text NOT NULL,
    key_id    text NOT NULL REFERENCES signing_keys,
    signed_at timestamptz NOT NULL,
    PRIMARY KEY (log_id, tree_size)
);

-- Checkpoints are evidence too: append-only like the events (0001's function refuses the change).
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Monthly partitions (UTC months) named audit_events_YYYYMM. The writer calls this at start and when
-- the month turns, for the current and the next month, so events never land in the DEFAULT
-- partition (a month cannot get its partition while the DEFAULT one holds rows of that month).
CREATE FUNCTION audit_events_ensure_month(moment timestamptz) RETURNS text LANGUAGE plpgsql AS $$
DECLARE
    first_day timestamp := date_trunc('month', moment AT TIME ZONE 'UTC');
    name text := 'audit_events_' || to_char(first_day, 'YYYYMM');
BEGIN
    -- Instances starting together take turns; the second one finds the table made.
    PERFORM pg_advisory_xact_lock(hashtext('audit_events_ensure_month'));
    IF to_regclass(name) IS NULL THEN
        EXECUTE format('CREATE TABLE %I PARTITION OF audit_events FOR VALUES FROM (%L) TO (%L)', name,
                       first_day AT TIME ZONE 'UTC', (first_day + interval '1 month') AT TIME ZONE 'UTC');
    END IF;
    RETURN name;
END $$;

-- Events written before this migration sit in the DEFAULT partition: move them into monthly ones.
-- The old DEFAULT is detached and dropped (DROP fires no row trigger); its rows are re-inserted, so
-- on a database with a long log this migration copies every event once.
ALTER TABLE audit_events DETACH PARTITION audit_events_default;
ALTER TABLE audit_events_default RENAME TO audit_events_before_0002;
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
SELECT audit_events_ensure_month(month)
    FROM (SELECT DISTINCT date_trunc('month', at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS month
          FROM audit_events_before_0002
          UNION SELECT now() UNION SELECT now() + interval '1 month') AS months;
INSERT INTO audit_events SELECT * FROM audit_events_before_0002;
DROP TABLE audit_events_before_0002;
