CREATE TABLE IF NOT EXISTS {claims} (
  project text NOT NULL,
  scene text NOT NULL,
  run text NOT NULL,
  host text NOT NULL,
  -- Which process on that host: a run on the same host takes over at once from one that died.
  process text NOT NULL DEFAULT '',
  claimed_at timestamptz NOT NULL DEFAULT now(),
  expires_at timestamptz NOT NULL,
  PRIMARY KEY (project, scene)
);
CREATE INDEX IF NOT EXISTS {run_index} ON {claims} (run);
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE, DELETE ON {claims} TO that role.
{private}
