CREATE TABLE IF NOT EXISTS {batches} (
  batch_id text PRIMARY KEY,
  -- When a run took the batch's images into their scenes (or found its output gone): any
  -- host's later run skips it, so an image the app removed since is never put back.
  collected_at timestamptz NOT NULL DEFAULT now(),
  saved integer NOT NULL DEFAULT 0,
  failed integer NOT NULL DEFAULT 0,
  lost integer NOT NULL DEFAULT 0
);
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE ON {batches} TO that role.
{private}
