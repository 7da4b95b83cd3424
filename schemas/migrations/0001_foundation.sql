-- 0001 foundation: vendors, datasets and their versions and records, members, licences, credentials,
-- sealed server secrets and the audit event table.
-- Why: the data model every other part of the gateway stands on (issue "Foundation").
-- Revises: nothing (first migration).

CREATE TABLE vendors (
    id         uuid PRIMARY KEY,
    name       text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE datasets (
    id               uuid PRIMARY KEY,
    vendor_id        uuid NOT NULL REFERENCES vendors,
    name             text NOT NULL CHECK (name ~ '^[a-z0-9][a-z0-9_-]{0,62}$'),
    description      text NOT NULL DEFAULT '',
    columns          jsonb NOT NULL,          -- [{"name", "type", "description"}], see gateway/columns.py
    partition_column text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vendor_id, name)
);

-- Versions are immutable: a publish appends one, nothing rewrites it.
CREATE TABLE dataset_versions (
    dataset_id   uuid NOT NULL REFERENCES datasets,
    version      integer NOT NULL CHECK (version > 0),
    records      bigint NOT NULL,
    bytes        bigint NOT NULL,            -- bytes of the stored records as JSON text
    upload_sha256 bytea NOT NULL,            -- digest of the body as uploaded
    upload_format text NOT NULL,
    published_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset_id, version)
);

-- Per version and partition, so that a licence's view of accumulation needs no scan of records.
CREATE TABLE dataset_partitions (
    dataset_id uuid NOT NULL,
    version    integer NOT NULL,
    partition  text NOT NULL,
    records    bigint NOT NULL,
    bytes      bigint NOT NULL,
    PRIMARY KEY (dataset_id, version, partition),
    FOREIGN KEY (dataset_id, version) REFERENCES dataset_versions
);

-- The primary key is the delivery order: a member's scope is an index range per partition, and
-- (partition, version, seq) is the keyset cursor. No foreign key: records are written by COPY
-- before their version row, in the same transaction.
CREATE TABLE records (
    dataset_id uuid NOT NULL,
    partition  text NOT NULL,
    version    integer NOT NULL,
    seq        bigint NOT NULL,
    data       jsonb NOT NULL,
    PRIMARY KEY (dataset_id, partition, version, seq)
);

CREATE TABLE members (
    id         uuid PRIMARY KEY,
    vendor_id  uuid NOT NULL REFERENCES vendors,
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    status     text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vendor_id, name)
);

CREATE TABLE licences (
    id                    uuid PRIMARY KEY,
    vendor_id             uuid NOT NULL REFERENCES vendors,
    member_id             uuid NOT NULL REFERENCES members,
    dataset_id            uuid NOT NULL REFERENCES datasets,
    partitions            text[] NOT NULL CHECK (cardinality(partitions) > 0),
    columns               text[] NOT NULL CHECK (cardinality(columns) > 0),
    valid_from            timestamptz NOT NULL,
    valid_until           timestamptz,
    records_per_month     bigint CHECK (records_per_month >= 0),
    records_quota_hard    boolean NOT NULL DEFAULT true,
    bytes_per_month       bigint CHECK (bytes_per_month >= 0),
    bytes_quota_hard      boolean NOT NULL DEFAULT true,
    requests_per_second   double precision CHECK (requests_per_second > 0),
    burst                 integer CHECK (burst > 0),
    terms_version         integer NOT NULL DEFAULT 1,
    status                text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended', 'revoked')),
    status_reason         text NOT NULL DEFAULT '',
    created_at            timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CHECK (valid_until IS NULL OR valid_until > valid_from)
);
-- One live licence per member and dataset: /v1/datasets/{dataset} must resolve to one licence.
CREATE UNIQUE INDEX licences_one_live_per_member_dataset ON licences (member_id, dataset_id)
    WHERE status <> 'revoked';

-- Every version of a licence's terms, so an acceptance always points at the exact text accepted.
CREATE TABLE licence_terms (
    licence_id uuid NOT NULL REFERENCES licences,
    version    integer NOT NULL,
    text       text NOT NULL,
    sha256     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (licence_id, version)
);

CREATE TABLE terms_acceptances (
    licence_id    uuid NOT NULL,
    terms_version integer NOT NULL,
    credential_id uuid NOT NULL,
    terms_sha256  bytea NOT NULL,
    accepted_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (licence_id, terms_version),
    FOREIGN KEY (licence_id, terms_version) REFERENCES licence_terms
);

-- API keys. Only a keyed hash of the token is stored (see keys/hashing.py); key_id is the public
-- part of the token used to find the row.
CREATE TABLE credentials (
    id                 uuid PRIMARY KEY,
    key_id             text NOT NULL UNIQUE,
    kind               text NOT NULL CHECK (kind IN ('operator', 'vendor', 'compliance', 'member', 'sharing')),
    vendor_id          uuid REFERENCES vendors,
    member_id          uuid REFERENCES members,
    hash_version       integer NOT NULL,
    hash               bytea NOT NULL,
    label              text NOT NULL DEFAULT '',
    allowed_networks   cidr[],
    client_cert_sha256 text,
    expires_at         timestamptz,
    revoked_at         timestamptz,
    created_at         timestamptz NOT NULL DEFAULT now(),
    CHECK ((kind IN ('member', 'sharing')) = (member_id IS NOT NULL)),
    CHECK ((kind = 'operator') = (vendor_id IS NULL))
);

-- Server secrets (API key hashing, cursor signing), sealed under the master key; versions rotate.
CREATE TABLE server_secrets (
    purpose    text NOT NULL,
    version    integer NOT NULL,
    sealed     bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purpose, version)
);

-- The audit log. Each gateway process is a writer with its own log (log_id) whose events are
-- numbered 0, 1, 2, ... without gaps (seq is assigned by the writer, never by a SEQUENCE, which can
-- skip values). `entry` is the canonical JSON that is hashed into the log's Merkle tree.
CREATE TABLE audit_events (
    at            timestamptz NOT NULL,
    log_id        text NOT NULL,
    seq           bigint NOT NULL,
    event_id      uuid NOT NULL,
    kind          text NOT NULL,
    outcome       text NOT NULL,
    vendor_id     uuid,
    member_id     uuid,
    dataset_id    uuid,
    licence_id    uuid,
    credential_id uuid,
    entry         bytea NOT NULL
) PARTITION BY RANGE (at);
CREATE TABLE audit_events_default PARTITION OF audit_events DEFAULT;
CREATE INDEX audit_events_log_seq ON audit_events (log_id, seq);
CREATE INDEX audit_events_vendor_at ON audit_events (vendor_id, at);
CREATE INDEX audit_events_event_id ON audit_events (event_id);

-- Append-only from the application's side: the gateway never updates or deletes an event, and
-- this trigger makes an attempt fail loudly instead of silently rewriting evidence.
CREATE FUNCTION audit_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_events is append-only (% refused)', TG_OP;
END $$;
CREATE TRIGGER audit_events_no_update BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION audit_events_append_only();

-- Every change to what the in-memory snapshot holds is announced on one channel as "what:id", in
-- the same transaction as the change, so every instance hears of it the moment the change commits.
-- TG_ARGV: the snapshot section to refresh and the column naming the row in it.
CREATE FUNCTION gateway_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    changed jsonb := to_jsonb(CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END);
BEGIN
    PERFORM pg_notify('gateway_changes', TG_ARGV[0] || ':' || (changed ->> TG_ARGV[1]));
    RETURN NULL;
END $$;

CREATE TRIGGER vendors_notify AFTER INSERT OR UPDATE OR DELETE ON vendors
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('vendors', 'id');
CREATE TRIGGER datasets_notify AFTER INSERT OR UPDATE OR DELETE ON datasets
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('datasets', 'id');
CREATE TRIGGER dataset_versions_notify AFTER INSERT ON dataset_versions
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('datasets', 'dataset_id');
CREATE TRIGGER members_notify AFTER INSERT OR UPDATE OR DELETE ON members
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('members', 'id');
CREATE TRIGGER licences_notify AFTER INSERT OR UPDATE OR DELETE ON licences
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('licences', 'id');
CREATE TRIGGER terms_acceptances_notify AFTER INSERT ON terms_acceptances
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('licences', 'licence_id');
CREATE TRIGGER credentials_notify AFTER INSERT OR UPDATE OR DELETE ON credentials
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('credentials', 'id');
CREATE TRIGGER server_secrets_notify AFTER INSERT ON server_secrets
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('server_secrets', 'purpose');
