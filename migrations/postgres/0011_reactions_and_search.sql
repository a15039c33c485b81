-- Reactions: who put which emoji on which message. Adding or taking one back is an event of
-- the room's seq stream (kind 'react' / 'unreact', the emoji as content, the message as
-- target_id, and in tally how many have that emoji on it afterwards), so a resuming client
-- learns of it.
ALTER TABLE messages DROP CONSTRAINT messages_kind_check;
ALTER TABLE messages ADD CONSTRAINT messages_kind_check
    CHECK (kind IN ('message', 'edit', 'delete', 'react', 'unreact'));
ALTER TABLE messages ADD COLUMN tally BIGINT;
-- Whom the message mentions: user ids separated by spaces, `all` for @room / @here.
ALTER TABLE messages ADD COLUMN mentions TEXT;

-- Mentions, for each member's count of unread ones: one row per user mentioned, and the nil
-- user for @room / @here (everyone in the room).
CREATE TABLE mentions (
    room    TEXT NOT NULL,
    user_id UUID NOT NULL,
    seq     BIGINT NOT NULL,
    PRIMARY KEY (room, user_id, seq)
);

CREATE TABLE reactions (
    message_id UUID NOT NULL,
    emoji      TEXT NOT NULL,
    user_id    UUID NOT NULL REFERENCES users (id),
    created_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (message_id, emoji, user_id)
);

-- Full-text search of messages: a tsvector kept by PostgreSQL itself (a stored generated
-- column, so edits and deletions re-index the message in the same statement), under a GIN
-- index. The 'simple' configuration lowercases and splits words without language-specific
-- stemming, since a room may speak any language. Edit and deletion events are not indexed.
ALTER TABLE messages ADD COLUMN search tsvector
    GENERATED ALWAYS AS (CASE WHEN kind = 'message' THEN to_tsvector('simple', content) END) STORED;
CREATE INDEX messages_search_idx ON messages USING GIN (search);
