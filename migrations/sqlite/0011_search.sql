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
