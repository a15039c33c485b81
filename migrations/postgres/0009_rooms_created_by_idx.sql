-- The per-account cap on room creation (rooms.max_created_per_user) counts by creator.
CREATE INDEX rooms_created_by_idx ON rooms (created_by);
