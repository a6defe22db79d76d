-- CreateTable
CREATE TABLE "items" (
    "id" SERIAL NOT NULL,
    "name" TEXT NOT NULL,
    "hits" INTEGER NOT NULL DEFAULT 0,

    CONSTRAINT "items_pkey" PRIMARY KEY ("id")
);

-- Seed: the app reads and updates these rows
INSERT INTO "items" ("name") SELECT 'item ' || g FROM generate_series(1, 20000) AS g;
