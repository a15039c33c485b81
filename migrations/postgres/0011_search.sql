-- Full-text search of messages: a tsvector kept by PostgreSQL itself (a stored generated
-- column, so edits and deletions re-index the message in the same statement), under a GIN
-- index. The 'simple' configuration lowercases and splits words without language-specific
-- stemming, since a room may speak any language. Edit and deletion events are not indexed.
ALTER TABLE messages ADD COLUMN search tsvector
    GENERATED ALWAYS AS (CASE WHEN kind = 'message' THEN to_tsvector('simple', content) END) STORED;
CREATE INDEX messages_search_idx ON messages USING GIN (search);
