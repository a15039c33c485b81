-- Idempotent sends are per (room, sender, client id): a client id reused in another room is a
-- new message there, not a false ack with the first room's id and seq. The room leads the
-- index so the send path's look-up (one room, a batch of client ids) is a range of index
-- entries, never a scan of the table.
DROP INDEX messages_sender_client_idx;
CREATE UNIQUE INDEX messages_room_client_idx ON messages (room, client_id, sender_id) WHERE client_id IS NOT NULL;
