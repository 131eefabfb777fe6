-- One row per image paid for, or about to be (operations/purchases.py): written `requested`
-- before the request, job or batch leaves, and `saved` in the same transaction as the locked
-- write that puts its URL in its scene. Any host settles what is unresolved; no run reads a
-- log folder to know what was bought.
CREATE TABLE IF NOT EXISTS {ledger} (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  db_id text NOT NULL,
  -- The project's key as the app's table returns it, and the scene: its claims key
  -- (id:... or index:N), index and id.
  project text NOT NULL,
  scene text NOT NULL,
  scene_index integer NOT NULL,
  scene_id text,
  slot integer NOT NULL DEFAULT 0,
  run text NOT NULL,
  host text NOT NULL,
  process text NOT NULL DEFAULT '',
  kind text NOT NULL,
  mode text NOT NULL CHECK (mode IN ('sync', 'job', 'batch', 'copy')),
  state text NOT NULL CHECK (state IN
    ('requested', 'received', 'stored', 'saved', 'failed', 'refused', 'lost', 'orphaned')),
  -- How its URL goes into the scene: appended, or in place of replaces[1] (rehost).
  edit text NOT NULL DEFAULT 'append' CHECK (edit IN ('append', 'replace')),
  -- The provider's handle: a job (id, where it is polled) or a batch's line.
  job_id text,
  poll_url text,
  result_url text,
  cancel_url text,
  batch_id text,
  custom_id text,
  input_file text,
  -- Once the bytes are in hand: where they are kept.
  url text,
  object_key text,
  sha256 text,
  bytes bigint,
  content_type text,
  source_url text,
  spool text,
  -- URLs this image stands in for (a regenerated expired link, a rehosted provider link).
  replaces text[],
  error text,
  -- Who works on the row now: a run that settles it, or the run that bought it.
  lease_run text,
  lease_process text,
  lease_until timestamptz,
  requested_at timestamptz NOT NULL DEFAULT now(),
  updated_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {open_index} ON {ledger} (db_id, project, scene)
  WHERE state IN ('requested', 'received', 'stored');
CREATE INDEX IF NOT EXISTS {batch_index} ON {ledger} (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS {project_index} ON {ledger} (db_id, project, id);
CREATE INDEX IF NOT EXISTS {updated_index} ON {ledger} (updated_at);
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE, DELETE ON {ledger} TO that role.
{private}
