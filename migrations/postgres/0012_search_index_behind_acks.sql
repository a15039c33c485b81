-- Full-text indexing moves out of the acking commit: computing a tsvector and updating the GIN
-- index inside every send's statement cost the send path CPU and latency. The vectors move to
-- their own table, filled by a background indexer in batches, room by room, following each
-- room's seq stream: search_progress holds how far it has come (one indexer per room at a time
-- across nodes, by row lock). Insert-only, so indexing rewrites no message row.
CREATE TABLE message_search (
    message_id UUID PRIMARY KEY,
    search     tsvector NOT NULL
);
INSERT INTO message_search (message_id, search) SELECT id, search FROM messages WHERE search IS NOT NULL;
ALTER TABLE messages DROP COLUMN search;
CREATE INDEX message_search_idx ON message_search USING GIN (search);

CREATE TABLE search_progress (
    room        TEXT PRIMARY KEY,
    indexed_seq BIGINT NOT NULL
);
-- Everything stored so far was indexed by the generated column this migration drops.
INSERT INTO search_progress (room, indexed_seq) SELECT name, last_seq FROM rooms;

-- Edits and deletions re-index their message at once, indexed yet or not. Against the
-- indexer's insert (ON CONFLICT DO NOTHING) either order ends with the newest content: an
-- upsert here waits for the indexer's row, or the indexer's waits for this one and yields.
CREATE FUNCTION message_search_follow() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO message_search (message_id, search) VALUES (NEW.id, to_tsvector('simple', NEW.content))
    ON CONFLICT (message_id) DO UPDATE SET search = excluded.search;
    RETURN NULL;
END
$$;
CREATE TRIGGER messages_search_follow AFTER UPDATE OF content ON messages
    FOR EACH ROW WHEN (NEW.kind = 'message') EXECUTE FUNCTION message_search_follow();
