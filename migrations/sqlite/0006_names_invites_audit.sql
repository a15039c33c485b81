-- Display names: what rooms show of a user instead of their email. Existing accounts start
-- with their address's local part, cut to 32 characters; messages keep the name their sender
-- had when they wrote them (as Matrix does), so history never needs a join.
ALTER TABLE users ADD COLUMN display_name TEXT NOT NULL DEFAULT '';
UPDATE users SET display_name = substr(substr(email, 1, instr(email, '@') - 1), 1, 32);
ALTER TABLE messages ADD COLUMN sender_name TEXT NOT NULL DEFAULT '';
UPDATE messages SET sender_name = (SELECT display_name FROM users WHERE users.id = messages.sender_id);

-- Single-use invitation codes for `auth.registration = "invite"`. Only a code's SHA-256 is
-- kept, as for refresh tokens. created_by is NULL when the command line made it.
CREATE TABLE invites (
    code_hash  TEXT PRIMARY KEY,
    created_by BLOB REFERENCES users (id),
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    used_by    BLOB REFERENCES users (id),
    used_at    TEXT
);

-- Administrative and moderation actions, append-only: who (actor_id NULL and actor 'cli' for
-- the command line), from where (client address, or cli@host), what, to whom, in which room.
CREATE TABLE audit_log (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    at       TEXT NOT NULL,
    actor_id BLOB,
    actor    TEXT NOT NULL,
    source   TEXT NOT NULL,
    action   TEXT NOT NULL,
    target   TEXT,
    room     TEXT,
    detail   TEXT
);
