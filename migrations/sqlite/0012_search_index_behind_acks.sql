-- Full-text indexing moves out of the acking commit: FTS5 tokenising inside every send's
-- transaction cost the send path about a quarter more CPU and stretched its latency. Messages
-- are now indexed by a background indexer in batches, room by room, following each room's seq
-- stream: search_progress holds how far it has come. The indexer adds a message to
-- message_search; the trigger below puts its current content into the FTS index. Edits and
-- deletions keep re-indexing an indexed message at once (messages_fts_update, unchanged); a
-- message edited before it is indexed is indexed with its edited content.
DROP TRIGGER messages_fts_insert;

CREATE TRIGGER message_search_insert AFTER INSERT ON message_search BEGIN
    INSERT INTO messages_fts (rowid, content)
        SELECT new.rowid, content FROM messages WHERE id = new.message_id AND content <> '';
END;

CREATE TABLE search_progress (
    room        TEXT PRIMARY KEY,
    indexed_seq INTEGER NOT NULL
);
-- Everything stored so far was indexed by the trigger this migration drops.
INSERT INTO search_progress (room, indexed_seq) SELECT name, last_seq FROM rooms;
