-- Alone in its migration: CREATE INDEX CONCURRENTLY cannot run inside a transaction,
-- and a migration.sql of several statements runs as one
CREATE INDEX CONCURRENTLY "items_note_idx" ON "items" ("note");
