-- Reactions: who put which emoji on which message. Adding or taking one back is an event of
-- the room's seq stream (kind 'react' / 'unreact', the emoji as content, the message as
-- target_id, and in tally how many have that emoji on it afterwards), so a resuming client
-- learns of it. Widening the kind CHECK means rebuilding the table in SQLite; tally is added
-- on the way.
CREATE TABLE messages_rebuilt (
    id           BLOB PRIMARY KEY,
    room         TEXT NOT NULL REFERENCES rooms (name),
    seq          INTEGER NOT NULL,
    sender_id    BLOB NOT NULL REFERENCES users (id),
    sender_email TEXT NOT NULL,
    content      TEXT NOT NULL,
    client_id    TEXT,
    created_at   TEXT NOT NULL,
    sender_name  TEXT NOT NULL DEFAULT '',
    kind         TEXT NOT NULL DEFAULT 'message'
                 CHECK (kind IN ('message', 'edit', 'delete', 'react', 'unreact')),
    target_id    BLOB,
    deleted_at   TEXT,
    edited_at    TEXT,
    tally        INTEGER,
    -- Whom the message mentions: user ids separated by spaces, `all` for @room / @here.
    mentions     TEXT,
    -- History and resume read by (room, seq); the constraint doubles as their index.
    UNIQUE (room, seq)
);
INSERT INTO messages_rebuilt
    (id, room, seq, sender_id, sender_email, content, client_id, created_at, sender_name, kind, target_id,
     deleted_at, edited_at)
SELECT id, room, seq, sender_id, sender_email, content, client_id, created_at, sender_name, kind, target_id,
       deleted_at, edited_at
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_rebuilt RENAME TO messages;
-- Idempotent sends: one message per (room, client id, sender).
CREATE UNIQUE INDEX messages_room_client_idx ON messages (room, client_id, sender_id) WHERE client_id IS NOT NULL;

-- Mentions, for each member's count of unread ones: one row per user mentioned, and the nil
-- user for @room / @here (everyone in the room).
CREATE TABLE mentions (
    room    TEXT NOT NULL,
    user_id BLOB NOT NULL,
    seq     INTEGER NOT NULL,
    PRIMARY KEY (room, user_id, seq)
);

CREATE TABLE reactions (
    message_id BLOB NOT NULL,
    emoji      TEXT NOT NULL,
    user_id    BLOB NOT NULL REFERENCES users (id),
    created_at TEXT NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);

-- Full-text search of messages (FTS5). The index is keyed by message_search.rowid, an INTEGER
-- PRIMARY KEY (which VACUUM never renumbers, unlike the implicit rowid of messages), and kept
-- in step by triggers: a message is indexed when stored, re-indexed when edited, and dropped
-- from the index when deleted (its content becomes empty). Edit and deletion events are not
-- indexed.
CREATE TABLE message_search (
    rowid      INTEGER PRIMARY KEY,
    message_id BLOB NOT NULL UNIQUE
);
CREATE VIRTUAL TABLE messages_fts USING fts5(content, tokenize = 'unicode61 remove_diacritics 2');

CREATE TRIGGER messages_fts_insert AFTER INSERT ON messages WHEN new.kind = 'message' BEGIN
    INSERT INTO message_search (message_id) VALUES (new.id);
    INSERT INTO messages_fts (rowid, content) VALUES (last_insert_rowid(), new.content);
END;

CREATE TRIGGER messages_fts_update AFTER UPDATE OF content ON messages WHEN new.kind = 'message' BEGIN
    DELETE FROM messages_fts WHERE rowid = (SELECT rowid FROM message_search WHERE message_id = old.id);
    INSERT INTO messages_fts (rowid, content)
        SELECT rowid, new.content FROM message_search WHERE message_id = new.id AND new.content <> '';
END;

INSERT INTO message_search (message_id) SELECT id FROM messages WHERE kind = 'message' ORDER BY room, seq;
INSERT INTO messages_fts (rowid, content)
    SELECT s.rowid, m.content FROM message_search s JOIN messages m ON m.id = s.message_id WHERE m.content <> '';
