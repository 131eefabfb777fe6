CREATE TABLE IF NOT EXISTS {journal} (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  at timestamptz NOT NULL DEFAULT now(),
  txid xid8 NOT NULL DEFAULT pg_catalog.pg_current_xact_id(),
  project text NOT NULL,
  scene_index integer NOT NULL,
  scene_id text,
  url text NOT NULL,
  change text NOT NULL CHECK (change IN ('added', 'removed')),
  -- On a removal: the same write took every URL the scene held and put others there (a
  -- regeneration, or a lost update that looks exactly like one).
  scene_replaced boolean NOT NULL DEFAULT false
);
CREATE INDEX IF NOT EXISTS {at_index} ON {journal} (at);
CREATE INDEX IF NOT EXISTS {project_index} ON {journal} (project, id);
-- Only the trigger (as its owner) writes it; only the owner reads it.
{private}
