-- Server administrators: they see and moderate every room. Granted and taken with
-- `confab user promote/demote`, or `confab create-user --admin`.
ALTER TABLE users ADD COLUMN is_admin BOOLEAN NOT NULL DEFAULT FALSE;
