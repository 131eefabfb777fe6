-- imgsave: the append function, imgsave's claims, ledger and batches tables and the journal for "public"."projects" ("id" text, "generated_output" text).
-- Run it in one transaction: a migration, or psql --single-transaction -f FILE.
-- Safe to run again; `imgsave sql --uninstall` prints what removes it.

CREATE OR REPLACE FUNCTION "public"."imgsave_url_problem"(url text)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $imgsave$
#variable_conflict use_variable
DECLARE
  netloc text;
BEGIN
  -- The URL rule of imgsave's own save (urls.url_problem): what is refused there is refused here.
  IF url IS NULL THEN RETURN 'URL is null'; END IF;
  IF url = '' THEN RETURN 'URL is empty'; END IF;
  IF length(url) > 2048 THEN
    RETURN format('URL is %s characters long (at most 2048)', length(url));
  END IF;
  IF translate(url, 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&''()*+,;=%', '') <> '' THEN
    RETURN 'URL contains whitespace, a control character or a character RFC 3986 does not '
      'allow unescaped';
  END IF;
  IF strpos(regexp_replace(url, '%[0-9A-Fa-f]{2}', '', 'g'), '%') > 0 THEN
    RETURN 'URL has a % that is not followed by two hex digits';
  END IF;
  IF NOT (lower(left(url, 8)) = 'https://' OR lower(left(url, 7)) = 'http://') THEN
    RETURN 'URL scheme is not allowed (only https or http)';
  END IF;
  netloc := substring(url FROM '^[A-Za-z]+://([^/?#]*)');
  IF strpos(netloc, '@') > 0 THEN RETURN 'URL carries credentials'; END IF;
  -- Stricter than imgsave's own rule by one case: an IPv6 literal host ([::1]).
  IF strpos(netloc, '[') > 0 OR strpos(netloc, ']') > 0 THEN
    RETURN 'URL has an IPv6 literal host';
  END IF;
  IF split_part(netloc, ':', 1) = '' THEN RETURN 'URL has no host'; END IF;
  RETURN NULL;
END
$imgsave$;

CREATE OR REPLACE FUNCTION "public"."imgsave_splice_image_urls"(body text, scene_position integer, urls text[])
RETURNS text
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $imgsave$
#variable_conflict use_variable
DECLARE
  tok text[];
  off integer[];  -- each token's offset in body, counted in characters from 0
  closing integer[] := '{}';  -- for an opening bracket's token, its closing one's
  stack integer[] := '{}';
  depth integer := 0;
  n integer;
  i integer;
  v integer;
  e integer;
  k text;
  seen integer;
  scenes_at integer;
  scene_at integer;
  urls_at integer;
  last_end integer;
  ids integer := 0;
  indexes integer := 0;
  lists integer := 0;
  encoded text;
  at integer;
  cut integer := 0;
  inserted text;
  place text := format('scene at position %s', scene_position + 1);
BEGIN
  SELECT array_agg(t.token ORDER BY t.n), array_agg(t.start ORDER BY t.n)
    INTO tok, off
    FROM (SELECT m.n, m.parts[2] AS token,
                 (sum(length(m.parts[1]) + length(m.parts[2])) OVER (ORDER BY m.n)
                  - length(m.parts[2]))::integer AS start
            FROM regexp_matches(body, E'([ \\t\\n\\r]*)("(?:[^"\\\\]|\\\\.)*"|[][{}:,]|[^][{}:," \\t\\n\\r]+)', 'g') WITH ORDINALITY AS m(parts, n)) AS t;
  n := coalesce(cardinality(tok), 0);
  FOR i IN 1..n LOOP
    IF tok[i] = '{' OR tok[i] = '[' THEN
      depth := depth + 1;
      stack[depth] := i;
    ELSIF tok[i] = '}' OR tok[i] = ']' THEN
      closing[stack[depth]] := i;
      depth := depth - 1;
    END IF;
  END LOOP;
  IF n = 0 OR tok[1] <> '{' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'imgsave: the document is not an object';
  END IF;
  -- The document's members: the scenes key must be there once.
  seen := 0;
  i := 2;
  IF tok[i] <> '}' THEN
    LOOP
      k := tok[i]::json #>> '{}';
      v := i + 2;
      e := CASE WHEN tok[v] IN ('{', '[') THEN closing[v] ELSE v END;
      IF k = 'scenes' THEN
        seen := seen + 1;
        scenes_at := v;
      END IF;
      i := e + 1;
      EXIT WHEN tok[i] = '}';
      i := i + 1;
    END LOOP;
  END IF;
  IF seen <> 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'imgsave: the document has the key %s %s times; refusing to guess which is meant',
      'scenes', seen);
  END IF;
  -- The scene at `scene_position` (0-based) in the scenes array.
  i := scenes_at + 1;
  seen := 0;
  IF tok[i] <> ']' THEN
    LOOP
      e := CASE WHEN tok[i] IN ('{', '[') THEN closing[i] ELSE i END;
      IF seen = scene_position THEN
        scene_at := i;
        EXIT;
      END IF;
      seen := seen + 1;
      i := e + 1;
      EXIT WHEN tok[i] = ']';
      i := i + 1;
    END LOOP;
  END IF;
  IF scene_at IS NULL OR tok[scene_at] <> '{' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: no %s', place);
  END IF;
  -- The scene's members: identity keys and the list at most once each.
  i := scene_at + 1;
  IF tok[i] <> '}' THEN
    LOOP
      k := tok[i]::json #>> '{}';
      v := i + 2;
      e := CASE WHEN tok[v] IN ('{', '[') THEN closing[v] ELSE v END;
      IF k = 'id' THEN ids := ids + 1; END IF;
      IF k = 'index' THEN indexes := indexes + 1; END IF;
      IF k = 'imageUrls' THEN
        lists := lists + 1;
        urls_at := v;
      END IF;
      last_end := e;
      i := e + 1;
      EXIT WHEN tok[i] = '}';
      i := i + 1;
    END LOOP;
  END IF;
  IF ids > 1 OR indexes > 1 OR lists > 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'imgsave: %s has the key %s %s times; refusing to guess which is meant', place,
      CASE WHEN ids > 1 THEN 'id' WHEN indexes > 1 THEN 'index' ELSE 'imageUrls' END,
      greatest(ids, indexes, lists));
  END IF;
  encoded := array_to_string(ARRAY(SELECT to_json(u)::text FROM unnest(urls) AS u), ',');
  IF urls_at IS NULL THEN
    inserted := '"imageUrls":[' || encoded || ']';
    IF last_end IS NULL THEN
      at := off[scene_at] + 1;
    ELSE
      at := off[last_end] + length(tok[last_end]);
      inserted := ',' || inserted;
    END IF;
  ELSIF tok[urls_at] = 'null' THEN
    at := off[urls_at];
    cut := 4;
    inserted := '[' || encoded || ']';
  ELSIF closing[urls_at] = urls_at + 1 THEN
    at := off[urls_at] + 1;
    inserted := encoded;
  ELSE
    -- The last token before the closing bracket ends the last element.
    e := closing[urls_at] - 1;
    at := off[e] + length(tok[e]);
    inserted := ',' || encoded;
  END IF;
  RETURN substr(body, 1, at) || inserted || substr(body, at + cut + 1);
END
$imgsave$;

CREATE OR REPLACE FUNCTION "public"."imgsave_append_image_urls"(project text, scene text, urls text[])
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $imgsave$
#variable_conflict use_variable
DECLARE
  raw text;
  body text;
  doc json;
  double boolean := false;
  scenes json;
  rec record;
  place text;
  sid text;
  eff numeric;
  ids text[] := '{}';
  indexes numeric[] := '{}';
  wanted numeric := CASE WHEN scene ~ '^[0-9]+$' THEN scene::numeric END;
  by_id integer;
  by_index integer;
  target integer;
  added text[] := '{}';
  url text;
  problem text;
BEGIN
  IF scene IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'imgsave: scene is null';
  END IF;
  -- The URL rule first: a refused URL locks nothing and writes nothing.
  FOREACH url IN ARRAY coalesce(urls, '{}') LOOP
    problem := "public"."imgsave_url_problem"(url);
    IF problem IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: refusing %s: %s',
        coalesce(quote_literal(left(url, 200)), 'NULL'), problem);
    END IF;
  END LOOP;
  SELECT t."generated_output"::text INTO raw FROM "public"."projects" AS t WHERE t."id" = project FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('imgsave: project %s not found',
      project);
  END IF;
  IF raw IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document is '
      'null', project);
  END IF;
  BEGIN
    doc := raw::json;
    body := raw;
    IF json_typeof(doc) = 'string' THEN
      double := true;
      body := doc #>> '{}';
      doc := body::json;
    END IF;
  EXCEPTION WHEN data_exception THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document is '
      'not JSON', project);
  END;
  IF json_typeof(doc) <> 'object' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document is '
      '%s, not an object', project, json_typeof(doc));
  END IF;
  scenes := doc -> 'scenes';
  IF scenes IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document '
      'has no %s key', project, 'scenes');
  ELSIF json_typeof(scenes) <> 'array' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: %s is %s, '
      'not an array', project, 'scenes', json_typeof(scenes));
  END IF;
  -- Every scene is checked, as imgsave's own save does: an ambiguous document is not written.
  FOR rec IN
    SELECT e.n::integer AS pos, json_typeof(e.s) AS kind, e.s -> 'id' AS sid,
           e.s -> 'index' AS idx, json_typeof(e.s -> 'imageUrls') AS list
      FROM json_array_elements(scenes) WITH ORDINALITY AS e(s, n)
  LOOP
    place := format('imgsave: project %s: scene at position %s', project, rec.pos);
    IF rec.kind <> 'object' THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s is %s, not an object', place,
        rec.kind);
    END IF;
    sid := NULL;
    IF rec.sid IS NOT NULL AND json_typeof(rec.sid) <> 'null' THEN
      IF json_typeof(rec.sid) <> 'string' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: %s is not a string',
          place, 'id');
      END IF;
      sid := rec.sid #>> '{}';
      IF sid = ANY (ids) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s shares id %s with an '
          'earlier scene; refusing to guess which one is meant', place, quote_literal(sid));
      END IF;
      ids := ids || sid;
      IF by_id IS NULL AND sid = scene THEN by_id := rec.pos; END IF;
    END IF;
    IF rec.idx IS NULL OR json_typeof(rec.idx) = 'null' THEN
      eff := rec.pos;
    ELSIF json_typeof(rec.idx) = 'number' AND rec.idx::text ~ '^[1-9][0-9]*$'
          AND length(rec.idx::text) <= 4000 THEN
      eff := rec.idx::text::numeric;
    ELSE
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: %s is not a positive '
        'integer', place, 'index');
    END IF;
    IF eff = ANY (indexes) THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s shares index %s with an '
        'earlier scene; refusing to guess which one is meant', place, eff);
    END IF;
    indexes := indexes || eff;
    IF eff = wanted THEN by_index := rec.pos; END IF;
    IF rec.list IS NOT NULL AND rec.list NOT IN ('array', 'null') THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: %s is not an array', place,
        'imageUrls');
    END IF;
  END LOOP;
  -- A scene is named by its id; failing that, by its index (its position when it has none).
  target := coalesce(by_id, by_index);
  IF target IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('imgsave: project %s has no scene '
      '%s', project, quote_literal(scene));
  END IF;
  -- Set-based, so hashed: a loop over `url = ANY (held)` is quadratic, and 20,000 URLs held
  -- the row lock for seconds. Each new URL once, in the order given.
  SELECT coalesce(array_agg(t.u ORDER BY t.n), '{}') INTO added
    FROM (SELECT u, min(n) AS n FROM unnest(coalesce(urls, '{}')) WITH ORDINALITY AS g(u, n)
           GROUP BY u) AS t
   WHERE NOT EXISTS (
     SELECT FROM json_array_elements(
                   CASE WHEN json_typeof(scenes -> (target - 1) -> 'imageUrls') = 'array'
                        THEN scenes -> (target - 1) -> 'imageUrls' ELSE '[]'::json END) AS x
      WHERE json_typeof(x) = 'string' AND x #>> '{}' = t.u);
  IF cardinality(added) = 0 THEN
    RETURN 0;
  END IF;
  PERFORM pg_catalog.set_config('imgsave.appended', json_build_object(
    'position', target - 1,
    'scene_index', CASE WHEN indexes[target] < 1000000000 THEN indexes[target] ELSE target END,
    'scene_id', CASE WHEN json_typeof(scenes -> (target - 1) -> 'id') = 'string'
                     THEN scenes -> (target - 1) ->> 'id' END,
    'urls', to_json(added))::text, true);
  body := "public"."imgsave_splice_image_urls"(body, target - 1, added);
  UPDATE "public"."projects" AS t
     SET "generated_output" = (CASE WHEN double THEN to_json(body)::text ELSE body END), "updated_at" = now()
   WHERE t."id" = project;
  PERFORM pg_catalog.set_config('imgsave.appended', '', true);
  RETURN cardinality(added);
END
$imgsave$;

REVOKE ALL ON FUNCTION "public"."imgsave_append_image_urls"(text, text, text[]) FROM PUBLIC;
REVOKE ALL ON FUNCTION "public"."imgsave_url_problem"(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION "public"."imgsave_splice_image_urls"(text, integer, text[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION "public"."imgsave_append_image_urls"(text, text, text[]) TO "app";
GRANT EXECUTE ON FUNCTION "public"."imgsave_url_problem"(text) TO "app";
GRANT EXECUTE ON FUNCTION "public"."imgsave_splice_image_urls"(text, integer, text[]) TO "app";
DO $imgsave$
BEGIN
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'anon') THEN
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_append_image_urls"(text, text, text[]) FROM "anon"';
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_url_problem"(text) FROM "anon"';
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_splice_image_urls"(text, integer, text[]) FROM "anon"';
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'authenticated') THEN
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_append_image_urls"(text, text, text[]) FROM "authenticated"';
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_url_problem"(text) FROM "authenticated"';
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_splice_image_urls"(text, integer, text[]) FROM "authenticated"';
  END IF;
  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = 'service_role') THEN
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_append_image_urls"(text, text, text[]) FROM "service_role"';
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_url_problem"(text) FROM "service_role"';
    EXECUTE 'REVOKE ALL ON FUNCTION "public"."imgsave_splice_image_urls"(text, integer, text[]) FROM "service_role"';
  END IF;
END
$imgsave$;

CREATE TABLE IF NOT EXISTS "public"."imgsave_claims" (
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
CREATE INDEX IF NOT EXISTS "imgsave_claims_run" ON "public"."imgsave_claims" (run);
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."imgsave_claims" TO that role.
REVOKE ALL ON "public"."imgsave_claims" FROM PUBLIC;
DO $imgsave$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role']::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON "public"."imgsave_claims" FROM %I', r);
    END IF;
  END LOOP;
END
$imgsave$;

CREATE TABLE IF NOT EXISTS "public"."imgsave_meta" (
  key text PRIMARY KEY,
  value text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now()
);
-- This database's identity, made once: written into every ledger row, log record, stored
-- object and batch, so that no host ever reads another database's records as its own. A
-- restored copy carries the same value: `imgsave sql --new-identity --apply` gives it its own.
INSERT INTO "public"."imgsave_meta" (key, value) VALUES ('database_id', gen_random_uuid()::text)
  ON CONFLICT (key) DO NOTHING;
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT ON "public"."imgsave_meta" TO that role.
REVOKE ALL ON "public"."imgsave_meta" FROM PUBLIC;
DO $imgsave$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role']::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON "public"."imgsave_meta" FROM %I', r);
    END IF;
  END LOOP;
END
$imgsave$;

-- One row per image paid for, or about to be (operations/purchases.py): written `requested`
-- before the request, job or batch leaves, and `saved` in the same transaction as the locked
-- write that puts its URL in its scene. Any host settles what is unresolved; no run reads a
-- log folder to know what was bought.
CREATE TABLE IF NOT EXISTS "public"."imgsave_ledger" (
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
CREATE INDEX IF NOT EXISTS "imgsave_ledger_open" ON "public"."imgsave_ledger" (db_id, project, scene)
  WHERE state IN ('requested', 'received', 'stored');
CREATE INDEX IF NOT EXISTS "imgsave_ledger_batch" ON "public"."imgsave_ledger" (batch_id) WHERE batch_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS "imgsave_ledger_project" ON "public"."imgsave_ledger" (db_id, project, id);
CREATE INDEX IF NOT EXISTS "imgsave_ledger_updated" ON "public"."imgsave_ledger" (updated_at);
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE, DELETE ON "public"."imgsave_ledger" TO that role.
REVOKE ALL ON "public"."imgsave_ledger" FROM PUBLIC;
DO $imgsave$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role']::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON "public"."imgsave_ledger" FROM %I', r);
    END IF;
  END LOOP;
END
$imgsave$;

CREATE TABLE IF NOT EXISTS "public"."imgsave_batches" (
  batch_id text PRIMARY KEY,
  -- When a run took the batch's images into their scenes (or found its output gone): any
  -- host's later run skips it, so an image the app removed since is never put back.
  collected_at timestamptz,
  saved integer NOT NULL DEFAULT 0,
  failed integer NOT NULL DEFAULT 0,
  lost integer NOT NULL DEFAULT 0
);
-- Since the ledger: who submitted it, for which database, what it asked for.
ALTER TABLE "public"."imgsave_batches" ALTER COLUMN collected_at DROP NOT NULL,
  ALTER COLUMN collected_at DROP DEFAULT,
  ADD COLUMN IF NOT EXISTS db_id text NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS run text NOT NULL DEFAULT '',
  ADD COLUMN IF NOT EXISTS input_file text,
  ADD COLUMN IF NOT EXISTS images integer NOT NULL DEFAULT 0,
  ADD COLUMN IF NOT EXISTS submitted_at timestamptz NOT NULL DEFAULT now();
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE ON "public"."imgsave_batches" TO that role.
REVOKE ALL ON "public"."imgsave_batches" FROM PUBLIC;
DO $imgsave$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role']::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON "public"."imgsave_batches" FROM %I', r);
    END IF;
  END LOOP;
END
$imgsave$;

CREATE TABLE IF NOT EXISTS "public"."imgsave_journal" (
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
CREATE INDEX IF NOT EXISTS "imgsave_journal_at" ON "public"."imgsave_journal" (at);
CREATE INDEX IF NOT EXISTS "imgsave_journal_project" ON "public"."imgsave_journal" (project, id);
-- Only the trigger (as its owner) writes it; only the owner reads it.
REVOKE ALL ON "public"."imgsave_journal" FROM PUBLIC;
ALTER TABLE "public"."imgsave_journal" ENABLE ROW LEVEL SECURITY;
DO $imgsave$
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY['anon', 'authenticated', 'service_role']::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format('REVOKE ALL ON "public"."imgsave_journal" FROM %I', r);
    END IF;
  END LOOP;
END
$imgsave$;

DROP FUNCTION IF EXISTS "public"."imgsave_journal_scenes"(jsonb);

CREATE OR REPLACE FUNCTION "public"."imgsave_journal_scenes"(doc jsonb)
RETURNS TABLE (scene text, scene_index integer, scene_id text, urls jsonb)
LANGUAGE sql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $imgsave$
  -- Never raises: a document imgsave would refuse is still the app's to write, and its URLs are
  -- still recorded. A scene is keyed by its id, else by its index (else its position).
  SELECT coalesce('id:' || e.sid, 'index:' || e.eff), e.eff, e.sid,
         CASE WHEN jsonb_typeof(e.s -> 'imageUrls') = 'array' THEN e.s -> 'imageUrls'
              ELSE '[]' END
    FROM (SELECT s, CASE WHEN jsonb_typeof(s -> 'id') = 'string' THEN s ->> 'id' END
                    AS sid,
                 CASE WHEN jsonb_typeof(s -> 'index') = 'number'
                       AND s ->> 'index' ~ '^[1-9][0-9]{0,8}$'
                      THEN (s ->> 'index')::integer ELSE n::integer END AS eff
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(doc -> 'scenes') = 'array'
                                           THEN doc -> 'scenes' ELSE '[]' END)
                 WITH ORDINALITY AS a(s, n)
           WHERE jsonb_typeof(s) = 'object') AS e
$imgsave$;

CREATE OR REPLACE FUNCTION "public"."imgsave_journal_parse"(value text, unwrap boolean)
RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE SECURITY INVOKER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $imgsave$
#variable_conflict use_variable
DECLARE
  doc jsonb;
BEGIN
  doc := value::jsonb;
  IF unwrap AND jsonb_typeof(doc) = 'string' THEN
    doc := (doc #>> '{}')::jsonb;
  END IF;
  RETURN doc;
EXCEPTION WHEN data_exception OR program_limit_exceeded THEN
  -- Not JSON, or nested past the server's stack depth: no scene, no URL, and the app's write
  -- goes through all the same (the journal never refuses one).
  RETURN NULL;
END
$imgsave$;

CREATE OR REPLACE FUNCTION "public"."imgsave_journal_record"()
RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET jit = off
AS $imgsave$
#variable_conflict use_variable
DECLARE
  appended jsonb;
  pos text;
  old_doc jsonb;
  new_doc jsonb;
BEGIN
  BEGIN
    appended := nullif(pg_catalog.current_setting('imgsave.appended', true), '')::jsonb;
  EXCEPTION WHEN data_exception THEN
    appended := NULL;  -- set to something else by someone else: not the append function's
  END;
  new_doc := "public"."imgsave_journal_parse"(NEW."generated_output"::text, true);
  IF TG_OP = 'UPDATE' THEN
    old_doc := "public"."imgsave_journal_parse"(OLD."generated_output"::text, true);
  END IF;
  pos := appended ->> 'position';
  -- The append function's own UPDATE says what it added, sparing the diff below. Anyone who
  -- may UPDATE the table can set that setting too, so it is believed only when the write is
  -- exactly that: the old document with those URLs appended to that scene's list.
  IF jsonb_typeof(appended -> 'urls') = 'array' AND pos ~ '^[0-9]{1,9}$'
     AND jsonb_typeof(old_doc -> 'scenes' -> pos::integer) = 'object'
     AND new_doc = jsonb_set(old_doc, ARRAY['scenes', pos],
           (old_doc -> 'scenes' -> pos::integer) || jsonb_build_object('imageUrls',
             coalesce(nullif(old_doc -> 'scenes' -> pos::integer -> 'imageUrls',
                             'null'::jsonb), '[]'::jsonb) || (appended -> 'urls')))
  THEN
    INSERT INTO "public"."imgsave_journal" (project, scene_index, scene_id, url, change)
    SELECT NEW."id"::text, (appended ->> 'scene_index')::integer, appended ->> 'scene_id', u,
           'added'
      FROM jsonb_array_elements_text(appended -> 'urls') AS u;
    RETURN NULL;
  END IF;
  -- Only the scenes whose list changed are taken apart: a write that adds one URL to a big
  -- document costs one scene's list, not every URL in it.
  WITH o AS (SELECT * FROM "public"."imgsave_journal_scenes"(old_doc)),
       n AS (SELECT * FROM "public"."imgsave_journal_scenes"(new_doc)),
       changed AS (SELECT o.scene AS o_scene, o.scene_index AS o_index, o.scene_id AS o_id,
                          o.urls AS o_urls, n.scene AS n_scene, n.scene_index AS n_index,
                          n.scene_id AS n_id, n.urls AS n_urls
                     FROM o FULL JOIN n ON n.scene = o.scene
                    WHERE o.urls IS DISTINCT FROM n.urls),
       was AS (SELECT c.o_scene AS scene, c.o_index AS scene_index, c.o_id AS scene_id,
                      x #>> '{}' AS url
                 FROM changed AS c, jsonb_array_elements(coalesce(c.o_urls, '[]')) AS x
                WHERE jsonb_typeof(x) = 'string'),
       now_ AS (SELECT c.n_scene AS scene, c.n_index AS scene_index, c.n_id AS scene_id,
                       x #>> '{}' AS url
                  FROM changed AS c, jsonb_array_elements(coalesce(c.n_urls, '[]')) AS x
                 WHERE jsonb_typeof(x) = 'string'),
       gone AS (SELECT * FROM was AS w WHERE NOT EXISTS
                  (SELECT FROM now_ AS v WHERE v.scene = w.scene AND v.url = w.url)),
       came AS (SELECT * FROM now_ AS v WHERE NOT EXISTS
                  (SELECT FROM was AS w WHERE w.scene = v.scene AND w.url = v.url))
  INSERT INTO "public"."imgsave_journal" (project, scene_index, scene_id, url, change, scene_replaced)
  SELECT NEW."id"::text, c.scene_index, c.scene_id, c.url, 'added', false FROM came AS c
  UNION ALL
  SELECT NEW."id"::text, g.scene_index, g.scene_id, g.url, 'removed',
         EXISTS (SELECT FROM came AS c WHERE c.scene = g.scene)
         AND NOT EXISTS (SELECT FROM was AS w JOIN now_ AS v USING (scene, url)
                          WHERE w.scene = g.scene)
    FROM gone AS g;
  RETURN NULL;
END
$imgsave$;

-- Two triggers, one function. An UPDATE that does not set the document costs nothing more (a
-- BEFORE trigger of the app's that rewrites the document on such an UPDATE is not seen); one
-- that sets it to what it was costs a comparison; the append function's costs one INSERT.
DROP TRIGGER IF EXISTS "imgsave_journal_insert" ON "public"."projects";
CREATE TRIGGER "imgsave_journal_insert" AFTER INSERT ON "public"."projects"
  FOR EACH ROW EXECUTE FUNCTION "public"."imgsave_journal_record"();
DROP TRIGGER IF EXISTS "imgsave_journal_update" ON "public"."projects";
CREATE TRIGGER "imgsave_journal_update" AFTER UPDATE OF "generated_output" ON "public"."projects"
  FOR EACH ROW
  WHEN (pg_catalog.current_setting('imgsave.appended', true) <> '' OR (OLD."generated_output"::text IS DISTINCT FROM NEW."generated_output"::text))
  EXECUTE FUNCTION "public"."imgsave_journal_record"();

REVOKE ALL ON FUNCTION "public"."imgsave_journal_scenes"(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION "public"."imgsave_journal_parse"(text, boolean) FROM PUBLIC;
REVOKE ALL ON FUNCTION "public"."imgsave_journal_record"() FROM PUBLIC;
