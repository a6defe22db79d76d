-- Expand: a nullable column (no rewrite, no default to backfill); the old version
-- keeps working, since it never names it
ALTER TABLE "items" ADD COLUMN "note" TEXT;
