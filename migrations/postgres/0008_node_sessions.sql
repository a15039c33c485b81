-- What each node has open, for `confab user sessions`: one row per node, its sessions as a JSON
-- array (userId, since, address, transport), rewritten when they change and at least every
-- 30 s. A node that stopped updating its row (killed) is ignored after 90 s.
CREATE TABLE node_sessions (
    node     TEXT PRIMARY KEY,
    seen_at  TIMESTAMPTZ NOT NULL,
    sessions TEXT NOT NULL
);
