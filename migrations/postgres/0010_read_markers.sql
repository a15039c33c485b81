-- Read markers: how far each member has read each room, so unread = rooms.last_seq -
-- last_read_seq without counting rows. Members who were already in a room have read what is
-- there (otherwise every old room would show its whole history as unread after the upgrade).
ALTER TABLE room_members ADD COLUMN last_read_seq BIGINT NOT NULL DEFAULT 0;
UPDATE room_members SET last_read_seq = rooms.last_seq FROM rooms WHERE rooms.name = room_members.room;
