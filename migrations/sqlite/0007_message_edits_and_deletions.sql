-- Editing or deleting a message is an event in the room's seq stream, so a client resuming
-- with `since` learns of it: a row of kind 'edit' (with the new content) or 'delete' naming the
-- message (target_id), written by whoever changed it. The message itself keeps its seq and
-- holds its current state: the latest content and edited_at, or no content and deleted_at.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message' CHECK (kind IN ('message', 'edit', 'delete'));
ALTER TABLE messages ADD COLUMN target_id BLOB;
ALTER TABLE messages ADD COLUMN deleted_at TEXT;
ALTER TABLE messages ADD COLUMN edited_at TEXT;
