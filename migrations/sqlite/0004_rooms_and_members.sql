-- Rooms as entities: a kind, a title and topic, a creator, archiving; and who belongs to them.
-- Every room that already exists had messages and was open to anyone: it stays public, and
-- whoever wrote in it becomes a member.
ALTER TABLE rooms ADD COLUMN kind TEXT NOT NULL DEFAULT 'public' CHECK (kind IN ('public', 'private', 'direct'));
ALTER TABLE rooms ADD COLUMN title TEXT;
ALTER TABLE rooms ADD COLUMN topic TEXT;
ALTER TABLE rooms ADD COLUMN created_by BLOB REFERENCES users (id);
ALTER TABLE rooms ADD COLUMN archived_at TEXT;

-- A member's role in one room. banned_at: refused from the room until unbanned (the row
-- stays, so a ban outlives leaving); muted_until: may read, may not send, until then.
CREATE TABLE room_members (
    room        TEXT NOT NULL REFERENCES rooms (name),
    user_id     BLOB NOT NULL REFERENCES users (id),
    role        TEXT NOT NULL CHECK (role IN ('owner', 'moderator', 'member')),
    joined_at   TEXT NOT NULL,
    banned_at   TEXT,
    muted_until TEXT,
    PRIMARY KEY (room, user_id)
);
-- "The rooms I am in".
CREATE INDEX room_members_user_idx ON room_members (user_id);

INSERT INTO room_members (room, user_id, role, joined_at)
SELECT room, sender_id, 'member', MIN(created_at) FROM messages GROUP BY room, sender_id;
