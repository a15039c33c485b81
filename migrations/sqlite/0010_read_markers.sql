-- Read markers: how far each member has read each room (last_read_seq), and how many
-- messages that covers (read_count), so that unread = rooms.message_count - read_count without
-- counting rows, and edits, deletions and reactions (which take seqs too) are not unread
-- messages. Members who were already in a room have read what is there (otherwise every old
-- room would show its whole history as unread after the upgrade).
ALTER TABLE rooms ADD COLUMN message_count INTEGER NOT NULL DEFAULT 0;
UPDATE rooms SET message_count = (SELECT COUNT(*) FROM messages WHERE messages.room = rooms.name AND kind = 'message');
ALTER TABLE room_members ADD COLUMN last_read_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE room_members ADD COLUMN read_count INTEGER NOT NULL DEFAULT 0;
UPDATE room_members SET
    last_read_seq = (SELECT last_seq FROM rooms WHERE rooms.name = room_members.room),
    read_count = (SELECT message_count FROM rooms WHERE rooms.name = room_members.room);
