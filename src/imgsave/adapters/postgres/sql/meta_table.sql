CREATE TABLE IF NOT EXISTS {meta} (
  key text PRIMARY KEY,
  value text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- This database's identity, made once: written into every ledger row, log record, stored
-- object and batch, so that no host ever reads another database's records as its own. A
-- restored copy carries the same value: `imgsave sql --new-identity --apply` gives it its own.
INSERT INTO {meta} (key, value) VALUES ('database_id', gen_random_uuid()::text)
  ON CONFLICT (key) DO NOTHING;
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT ON {meta} TO that role.
{private}
