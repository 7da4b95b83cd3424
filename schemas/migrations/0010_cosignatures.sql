-- 0010 witness cosignatures of audit checkpoints (c2sp.org/tlog-witness, c2sp.org/tlog-cosignature).
-- Why: issue 15 "Witnesses". The gateway pushes each new checkpoint, with a consistency proof, to the
-- witnesses of GATEWAY_WITNESSES; what each returns is a cosignature line, kept here and appended to
-- the checkpoint's note in evidence bundles, so that a verifier can ask for a quorum of independent
-- witnesses (schemas/audit-format.md §8). Like the checkpoints, cosignatures are evidence: append-only.
-- Revises: 0002 (audit_checkpoints), 0006 (append_only()).

CREATE TABLE audit_cosignatures (
    log_id         text NOT NULL,
    tree_size      bigint NOT NULL,
    witness_vkey   text NOT NULL,          -- the witness's cosignature/v1 verifier key, as configured
    signature_line text NOT NULL CHECK (signature_line LIKE '— % %' AND right(signature_line, 1) = E'\n'),
    cosigned_at    timestamptz NOT NULL,   -- the cosignature's own timestamp (the witness's clock)
    received_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Of a row of audit_checkpoints, which is never deleted; no foreign key, so that a TRUNCATE of
    -- audit_checkpoints meets its append-only trigger, not a constraint.
    PRIMARY KEY (log_id, tree_size, witness_vkey)
);

-- The pusher asks, per witness and log, for the largest size a witness has cosigned.
CREATE INDEX audit_cosignatures_by_witness ON audit_cosignatures (witness_vkey, log_id, tree_size);

CREATE TRIGGER audit_cosignatures_no_update BEFORE UPDATE OR DELETE ON audit_cosignatures
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER audit_cosignatures_no_truncate BEFORE TRUNCATE ON audit_cosignatures
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
