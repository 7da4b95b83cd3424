-- 0013 answers kept for Idempotency-Key retries.
-- Why: issue 16 "Versions": a vendor admin's retried POST or PATCH (a publish after a timeout) must get
-- the first answer and change nothing (gateway/http/idempotency.py). A row commits in the same
-- transaction as the change it answers, so there is never a change without its answer or the reverse.
-- The answer is sealed with the master key: it may hold a secret just issued (an API key).
-- Revises: nothing.

CREATE TABLE idempotency_keys (
    vendor_id    uuid NOT NULL REFERENCES vendors,
    key          text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
    fingerprint  bytea NOT NULL CHECK (length(fingerprint) = 32),  -- SHA-256 of method, path, query, type, body
    status       smallint NOT NULL CHECK (status BETWEEN 200 AND 299),
    media_type   text NOT NULL,
    sealed_body  bytea NOT NULL,
    event_kind   text NOT NULL,  -- the first event of the change answered: a retry's event names it
    event_id     uuid NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vendor_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (created_at);
