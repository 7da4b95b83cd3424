-- 0016 terminations: a licence ended with a signed notice, and the member's deletion attestation.
-- Why: issue 16 "Termination". Ending a licence revokes it and issues a notice the member cannot say it
-- never got; the member answers that its copies are deleted. Both are evidence (schemas/audit-format.md
-- §6.1.4), so their exact bytes are kept as they were signed and logged, and neither is ever changed.
-- Revises: 0001 (licences, credentials).

CREATE TABLE terminations (
    id              uuid PRIMARY KEY,
    vendor_id       uuid NOT NULL REFERENCES vendors,
    licence_id      uuid NOT NULL UNIQUE REFERENCES licences,  -- a licence is terminated once
    member_id       uuid NOT NULL REFERENCES members,
    grounds         text NOT NULL CHECK (grounds IN ('contract_end', 'breach', 'member_leaving', 'other')),
    effective_at    timestamptz NOT NULL,
    attestation_due date NOT NULL,                              -- a calendar day in Japan (JST)
    notice          text NOT NULL,                              -- the notice's RFC 8785 bytes, as signed
    notice_sha256   bytea NOT NULL,
    key_id          text NOT NULL,                              -- the audit key that signed it
    signature       bytea NOT NULL                              -- Ed25519 over the notice's bytes
);
CREATE INDEX terminations_vendor ON terminations (vendor_id, effective_at);

CREATE TABLE deletion_attestations (
    termination_id  uuid PRIMARY KEY REFERENCES terminations,   -- one per termination
    credential_id   uuid NOT NULL,
    attested_at     timestamptz NOT NULL,
    attestation     text NOT NULL,                              -- its RFC 8785 bytes, as logged
    attestation_sha256 bytea NOT NULL
);

CREATE TRIGGER terminations_append_only BEFORE UPDATE OR DELETE ON terminations
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER terminations_no_truncate BEFORE TRUNCATE ON terminations
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
CREATE TRIGGER deletion_attestations_append_only BEFORE UPDATE OR DELETE ON deletion_attestations
    FOR EACH ROW EXECUTE FUNCTION append_only();
CREATE TRIGGER deletion_attestations_no_truncate BEFORE TRUNCATE ON deletion_attestations
    FOR EACH STATEMENT EXECUTE FUNCTION append_only();
