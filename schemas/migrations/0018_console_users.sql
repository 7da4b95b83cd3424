-- 0018 console_users: the people who sign in to the web console, and their server-side sessions.
-- Why: vendor staff, compliance officers and members' staff act through the console as persons, not
-- keys, and the audit log must say which employee granted a licence (actor kind `console-user`).
-- A user belongs to one vendor (roles vendor-admin and compliance) or to one of its members (role
-- member). The password is an argon2id hash; the TOTP secret is sealed under the master key. Failed
-- sign-ins are counted per user so that the backoff holds across instances. A session row is the
-- session: signing out, a suspension or a timeout ends it on every instance at the next request.
-- Revises: 0017 (none of its objects).

CREATE TABLE console_users (
    id uuid PRIMARY KEY,
    vendor_id uuid NOT NULL REFERENCES vendors (id),
    member_id uuid REFERENCES members (id),
    role text NOT NULL CHECK (role IN ('vendor-admin', 'compliance', 'member')),
    email text NOT NULL CHECK (email = lower(email) AND length(email) BETWEEN 3 AND 254),
    display_name text NOT NULL DEFAULT '' CHECK (length(display_name) <= 200),
    password_hash text NOT NULL,
    totp_sealed bytea,
    totp_enrolled boolean NOT NULL DEFAULT false,
    totp_last_step bigint NOT NULL DEFAULT 0,
    failed_sign_ins integer NOT NULL DEFAULT 0,
    locked_until timestamptz,
    status text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CHECK ((role = 'member') = (member_id IS NOT NULL))
);
CREATE UNIQUE INDEX console_users_email ON console_users (email);
CREATE INDEX console_users_vendor ON console_users (vendor_id);

CREATE TABLE console_sessions (
    id uuid PRIMARY KEY,
    token_sha256 bytea NOT NULL UNIQUE,
    user_id uuid NOT NULL REFERENCES console_users (id),
    -- 'password': the password was right and the second factor is awaited; 'active': signed in.
    stage text NOT NULL CHECK (stage IN ('password', 'active')),
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    ended_at timestamptz,
    end_reason text
);
CREATE INDEX console_sessions_user ON console_sessions (user_id) WHERE ended_at IS NULL;
