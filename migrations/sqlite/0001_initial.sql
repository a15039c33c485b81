-- confab schema, SQLite flavour: the same tables and constraints as migrations/postgres, with
-- UUIDs as 16-byte BLOBs and timestamps as RFC 3339 TEXT (how sqlx encodes them here).

-- Accounts. The application lowercases and trims emails; the unique constraint is what makes
-- "email taken" atomic. Users are disabled, never deleted, so messages keep a valid sender.
CREATE TABLE users (
    id            BLOB PRIMARY KEY,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    TEXT NOT NULL,
    disabled_at   TEXT
);

-- Only the SHA-256 of a refresh token is stored. A spent token presented again revokes its family.
CREATE TABLE refresh_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id    BLOB NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  BLOB NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    spent_at   TEXT,
    revoked_at TEXT
);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);

-- Per-room counter; SQLite has a single writer, so the increment inside the message's
-- transaction is trivially serialised.
CREATE TABLE rooms (
    name       TEXT PRIMARY KEY,
    last_seq   INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE messages (
    id           BLOB PRIMARY KEY,
    room         TEXT NOT NULL REFERENCES rooms (name),
    seq          INTEGER NOT NULL,
    sender_id    BLOB NOT NULL REFERENCES users (id),
    sender_email TEXT NOT NULL,
    content      TEXT NOT NULL,
    client_id    TEXT,
    created_at   TEXT NOT NULL,
    -- History and resume read by (room, seq); the constraint doubles as their index.
    UNIQUE (room, seq)
);
-- Idempotent sends: one message per (sender, client id).
CREATE UNIQUE INDEX messages_sender_client_idx ON messages (sender_id, client_id) WHERE client_id IS NOT NULL;

-- Small cluster-wide values, e.g. the generated JWT key.
CREATE TABLE settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
