CREATE TABLE IF NOT EXISTS {batches} (
  batch_id text PRIMARY KEY,
  -- When a run took the batch's images into their scenes (or found its output gone): any
  -- host's later run skips it, so an image the app removed since is never put back.
  collected_at timestamptz,
  saved integer NOT NULL DEFAULT 0,
  failed integer NOT NULL DEFAULT 0,
  lost integer NOT NULL DEFAULT 0
);
-- Since the ledger: who submitted it, for which database, what it asked for.
ALTER TABLE {batches} ALTER COLUMN collected_at DROP NOT NULL,
  ALTER COLUMN collected_at DROP DEFAULT,
  ADD COLUMN IF NOT EXISTS db_id text NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS run text NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS input_file text,
  ADD COLUMN IF NOT EXISTS images integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS submitted_at timestamptz NOT NULL DEFAULT now();
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE ON {batches} TO that role.
{private}
