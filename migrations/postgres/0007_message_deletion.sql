-- Deleting a message is an event in the room's seq stream, so a client resuming with `since`
-- learns of it: a row of kind 'delete' naming the deleted message (target_id), written by
-- whoever deleted it. The deleted message itself keeps its seq and loses its content.
ALTER TABLE messages ADD COLUMN kind TEXT NOT NULL DEFAULT 'message' CHECK (kind IN ('message', 'delete'));
ALTER TABLE messages ADD COLUMN target_id UUID;
ALTER TABLE messages ADD COLUMN deleted_at TIMESTAMPTZ;
