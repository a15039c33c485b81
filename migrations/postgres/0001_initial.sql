-- confab schema, PostgreSQL flavour. The SQLite tree has a migration of the same number and
-- name with the same tables and constraints; the store's conformance suite keeps them in step.

-- Accounts. The application lowercases and trims emails; the unique constraint is what makes
-- "email taken" atomic when two registrations race. Users are disabled, never deleted, so
-- messages keep a valid sender.
CREATE TABLE users (
    id            UUID PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL,
    disabled_at   TIMESTAMPTZ
);

-- Refresh tokens are opaque random strings; only their SHA-256 is stored, so a database leak
-- does not hand out sessions. Every rotation spends a token and adds one to the same family;
-- presenting a spent token again revokes the family (someone copied it).
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    UUID NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  UUID NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    spent_at   TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- One row per room with activity. last_seq is the per-room counter: incrementing it inside the
-- message's transaction takes the row lock, which serialises writers of one room (and only that
-- room) across every node, so seqs are gapless and unique.
CREATE TABLE rooms (
    name       TEXT PRIMARY KEY,
    last_seq   BIGINT NOT NULL DEFAULT 0,
    created_at TIMESTAMPTZ NOT NULL
);

CREATE TABLE messages (
    id           UUID PRIMARY KEY,
    room         TEXT NOT NULL REFERENCES rooms (name),
    seq          BIGINT NOT NULL,
    sender_id    UUID NOT NULL REFERENCES users (id),
    sender_email TEXT NOT NULL,
    content      TEXT NOT NULL,
    client_id    TEXT,
    created_at   TIMESTAMPTZ NOT NULL,
    -- History and resume read by (room, seq); the constraint doubles as their index.
    CONSTRAINT messages_room_seq_key UNIQUE (room, seq)
);
-- Idempotent sends: one message per (sender, client id).
CREATE UNIQUE INDEX messages_sender_client_idx ON messages (sender_id, client_id) WHERE client_id IS NOT NULL;

-- Small cluster-wide values, e.g. the generated JWT key every node must agree on.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
