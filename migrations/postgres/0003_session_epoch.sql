-- Revocation that reaches live sessions. Every access token carries the epoch its user had
-- when it was issued; disabling the account, changing its password or kicking it bumps the
-- epoch, so older tokens are refused everywhere. sessions_revoked_ms (Unix milliseconds) says
-- when that last happened: each node polls for recent revocations and closes the sessions it
-- holds with an older epoch, whichever process (another node, the CLI) made the change.
ALTER TABLE users ADD COLUMN session_epoch BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN sessions_revoked_ms BIGINT;
CREATE INDEX users_sessions_revoked_idx ON users (sessions_revoked_ms) WHERE sessions_revoked_ms IS NOT NULL;
