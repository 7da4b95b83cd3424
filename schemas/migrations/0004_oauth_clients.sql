-- 0004 oauth clients: OAuth 2.0 client-credentials clients of members, and change notifications for
-- them and for the keyring.
-- Why: issue 5 "Credentials and keys". A member's software may authenticate with short-lived JWT access
-- tokens (RFC 9068) from POST /oauth/token instead of a long-lived API key. Every instance answers the
-- token endpoint and checks every token from its in-memory snapshot, so a revoked client, and a rotated
-- or retired JWT signing key, must reach every instance by NOTIFY like credentials do.
-- Revises: 0001 (gateway_notify_change on a new table), 0002 (signing_keys now announces its changes).

-- The client id is public (lpdi_ + key id); the secret (lpda_ + key id + secret + checksum, see
-- keys/apikeys.py) is kept only as an HMAC under the versioned server secret, like API keys.
CREATE TABLE oauth_clients (
    id           uuid PRIMARY KEY,
    client_id    text NOT NULL UNIQUE CHECK (client_id ~ '^lpdi_[0-9A-Za-z]{16}$'),
    vendor_id    uuid NOT NULL REFERENCES vendors,
    member_id    uuid NOT NULL REFERENCES members,
    hash_version integer NOT NULL,
    hash         bytea NOT NULL,
    label        text NOT NULL DEFAULT '' CHECK (length(label) <= 200),
    created_at   timestamptz NOT NULL DEFAULT now(),
    revoked_at   timestamptz
);
CREATE INDEX oauth_clients_vendor ON oauth_clients (vendor_id, created_at);

CREATE TRIGGER oauth_clients_notify AFTER INSERT OR UPDATE OR DELETE ON oauth_clients
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('oauth_clients', 'id');
-- A rotation or retirement of a JWT key must reach every instance's snapshot: new tokens are signed
-- with the new key, and a retired key stops verifying at once. (Audit keys change here too; the
-- snapshot reloads its JWT keys on either, which costs one small query.)
CREATE TRIGGER signing_keys_notify AFTER INSERT OR UPDATE OR DELETE ON signing_keys
    FOR EACH ROW EXECUTE FUNCTION gateway_notify_change('signing_keys', 'key_id');
