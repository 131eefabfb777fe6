"""The SQL `imgsave sql` installs in the app's own database. Pure: text in, text out.

Two parts, for the configured table, column and key names:

- `imgsave_append_image_urls(project, scene, urls)`: imgsave's save as a function the app's
  route calls instead of its fetch-modify-write (supabase-js `rpc()`, or plain SQL). Same rules
  as `saver`: the row taken with `FOR UPDATE`, the scene found by id, else index, else position,
  ambiguous documents refused, append-if-absent, both storage forms, json and text columns
  spliced byte for byte (as `jsontext` does), `updated_at = now()`, the URL rule enforced.
  `SECURITY INVOKER`, so the caller's own rights and row-level security apply.
- the journal (`--journal`): a table and an `AFTER INSERT OR UPDATE` trigger that record every
  URL that appears in or disappears from a scene, whoever wrote it. The trigger function is
  `SECURITY DEFINER`: the app's roles write the journal through it without any right on it.

Every function pins `search_path` to `pg_catalog, pg_temp` and names imgsave's own objects with
their schema, so a function or operator planted earlier in a caller's path is never the one run.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql

from imgsave.core.documents import Shape
from imgsave.core.url_rule import MAX_URL_LENGTH

APPEND = "imgsave_append_image_urls"
URL_PROBLEM = "imgsave_url_problem"
SPLICE = "imgsave_splice_image_urls"
JOURNAL = "imgsave_journal"
JOURNAL_RECORD = "imgsave_journal_record"
JOURNAL_SCENES = "imgsave_journal_scenes"
JOURNAL_PARSE = "imgsave_journal_parse"
CLAIMS = "imgsave_claims"
# A transaction-local setting: what the append function's own UPDATE adds (see _append).
APPENDED = "imgsave.appended"
# On Supabase these are the API's roles: `authenticated` (a signed-in user, under row-level
# security) and `service_role` (the server's key, which bypasses it). `anon` never gets it.
SUPABASE_ROLES = ("authenticated", "service_role")
API_ROLES = ("anon", "authenticated", "service_role")
# What RFC 3986 lets a URL carry unescaped (the URL rule in `urls`); all of it ASCII.
_URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
# One JSON token and the whitespace before it: a string, a punctuation mark, or a literal or
# number. Matched in order over valid JSON, the tokens tile the text (only trailing whitespace
# is left over), so their lengths give each token's offset.
_TOKEN = r'([ \t\n\r]*)("(?:[^"\\]|\\.)*"|[][{}:,]|[^][{}:," \t\n\r]+)'


@dataclass(frozen=True)
class Table:
    """The app's table as the database describes it (`Database.describe`)."""

    schema: str
    name: str
    key_column: str
    # As format_type() spells it (text, uuid, bigint, character varying(64)): SQL already, from
    # the catalog, never from the user; written into the SQL as it is.
    key_type: str
    document_column: str
    document_type: str  # jsonb, json, text, character varying
    updated_at_column: str | None  # None when the table has no such timestamp column

    @property
    def keeps_text(self) -> bool:
        return self.document_type != "jsonb"


@dataclass(frozen=True)
class Options:
    journal: bool = False
    # Roles given EXECUTE; None: `authenticated` and `service_role` where they exist (Supabase).
    grant: tuple[str, ...] | None = None
    allow_http: bool = False


def install(table: Table, shape: Shape, options: Options) -> str:
    """The migration: idempotent (`CREATE OR REPLACE`, `IF NOT EXISTS`), to run in one
    transaction."""
    parts = [_header(table, options), _url_problem(table, options)]
    if table.keeps_text:
        parts.append(_splice(table, shape))
    parts.append(_append(table, shape, journaled=options.journal))
    parts.append(_privileges(table, options))
    parts.append(claims_table(table.schema))
    if options.journal:
        parts.append(_journal(table, shape))
    return "\n\n".join(parts) + "\n"


def uninstall(table: Table, options: Options) -> str:
    """Drops what `install` with the same options created, and nothing else: without
    `journal` the journal (and the trigger that the app's writes go through) stays."""
    statements = [
        f"DROP FUNCTION IF EXISTS {_fn(table, APPEND)}({table.key_type}, text, text[]);",
        f"DROP FUNCTION IF EXISTS {_fn(table, SPLICE)}(text, integer, text[]);",
        f"DROP FUNCTION IF EXISTS {_fn(table, URL_PROBLEM)}(text);",
        f"DROP TABLE IF EXISTS {_fn(table, CLAIMS)};",
    ]
    if options.journal:
        statements += [
            f"DROP TRIGGER IF EXISTS {_id(JOURNAL + '_insert')} ON {_table(table)};",
            f"DROP TRIGGER IF EXISTS {_id(JOURNAL + '_update')} ON {_table(table)};",
            f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_RECORD)}();",
            f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_SCENES)}(jsonb);",
            f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_PARSE)}(text, boolean);",
            f"DROP TABLE IF EXISTS {_fn(table, JOURNAL)};",
        ]
    return "\n".join(["-- imgsave: uninstall", *statements]) + "\n"


def _header(table: Table, options: Options) -> str:
    what = "the append function, the claims table" + (" and the journal" if options.journal else "")
    # Names quoted even in a comment: a newline in one must not end the comment.
    return (
        f"-- imgsave: {what} for {_table(table)}"
        f" ({_id(table.key_column)} {table.key_type}, {_id(table.document_column)}"
        f" {table.document_type}).\n"
        "-- Run it in one transaction: a migration, or psql --single-transaction -f FILE.\n"
        "-- Safe to run again; `imgsave sql --uninstall` prints what removes it."
    )


def _id(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def _lit(value: str) -> str:
    return sql.Literal(value).as_string(None).strip()


def _fn(table: Table, name: str) -> str:
    return sql.Identifier(table.schema, name).as_string(None)


def _table(table: Table) -> str:
    return sql.Identifier(table.schema, table.name).as_string(None)


def _body(text: str) -> str:
    """`text` dollar-quoted with a tag it cannot contain."""
    tag = "imgsave"
    while f"${tag}$" in text:
        tag += "_"
    return f"${tag}$\n{text}\n${tag}$"


def _function(
    table: Table,
    name: str,
    arguments: str,
    returns: str,
    body: str,
    *,
    language: str = "plpgsql",
    volatility: str = "VOLATILE",
    security: str = "SECURITY INVOKER",
) -> str:
    if language == "plpgsql":
        # A table column named like a parameter (project, scene) must not make a query ambiguous.
        body = "#variable_conflict use_variable\n" + body
    return (
        f"CREATE OR REPLACE FUNCTION {_fn(table, name)}({arguments})\n"
        f"RETURNS {returns}\nLANGUAGE {language} {volatility} {security}\n"
        "SET search_path = pg_catalog, pg_temp\n"
        # Small queries the planner over-costs (a set-returning function is guessed at 1,000
        # rows): JIT would spend ~50 ms compiling each, under the row lock.
        "SET jit = off\n"
        f"AS {_body(body)};"
    )


def _url_problem(table: Table, options: Options) -> str:
    schemes = ("https://", "http://") if options.allow_http else ("https://",)
    allowed = " OR ".join(f"lower(left(url, {len(s)})) = {_lit(s)}" for s in schemes)
    only = " or ".join(s.rstrip(":/") for s in schemes)
    body = f"""\
DECLARE
  netloc text;
BEGIN
  -- The URL rule of imgsave's own save (urls.url_problem): what is refused there is refused here.
  IF url IS NULL THEN RETURN 'URL is null'; END IF;
  IF url = '' THEN RETURN 'URL is empty'; END IF;
  IF length(url) > {MAX_URL_LENGTH} THEN
    RETURN format('URL is %s characters long (at most {MAX_URL_LENGTH})', length(url));
  END IF;
  IF translate(url, {_lit(_URL_CHARS)}, '') <> '' THEN
    RETURN 'URL contains whitespace, a control character or a character RFC 3986 does not '
      'allow unescaped';
  END IF;
  IF strpos(regexp_replace(url, '%[0-9A-Fa-f]{{2}}', '', 'g'), '%') > 0 THEN
    RETURN 'URL has a % that is not followed by two hex digits';
  END IF;
  IF NOT ({allowed}) THEN
    RETURN {_lit(f"URL scheme is not allowed (only {only})")};
  END IF;
  netloc := substring(url FROM '^[A-Za-z]+://([^/?#]*)');
  IF strpos(netloc, '@') > 0 THEN RETURN 'URL carries credentials'; END IF;
  -- Stricter than imgsave's own rule by one case: an IPv6 literal host ([::1]).
  IF strpos(netloc, '[') > 0 OR strpos(netloc, ']') > 0 THEN
    RETURN 'URL has an IPv6 literal host';
  END IF;
  IF split_part(netloc, ':', 1) = '' THEN RETURN 'URL has no host'; END IF;
  RETURN NULL;
END"""
    return _function(table, URL_PROBLEM, "url text", "text", body, volatility="IMMUTABLE")


def _splice(table: Table, shape: Shape) -> str:
    """For json and text columns: append to one scene's list in the text itself, so every
    other byte stays as stored (jsontext.splice_append, the same edits)."""
    scenes_key, urls_key = _lit(shape.scenes_key), _lit(shape.urls_key)
    id_key, index_key = _lit(shape.id_key), _lit(shape.index_key)
    # The key as Python's json.dumps writes it, so both writers insert the same bytes.
    urls_entry = _lit(json.dumps(shape.urls_key) + ":[")
    body = f"""\
DECLARE
  tok text[];
  off integer[];  -- each token's offset in body, counted in characters from 0
  closing integer[] := '{{}}';  -- for an opening bracket's token, its closing one's
  stack integer[] := '{{}}';
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
            FROM regexp_matches(body, {_lit(_TOKEN)}, 'g') WITH ORDINALITY AS m(parts, n)) AS t;
  n := coalesce(cardinality(tok), 0);
  FOR i IN 1..n LOOP
    IF tok[i] = '{{' OR tok[i] = '[' THEN
      depth := depth + 1;
      stack[depth] := i;
    ELSIF tok[i] = '}}' OR tok[i] = ']' THEN
      closing[stack[depth]] := i;
      depth := depth - 1;
    END IF;
  END LOOP;
  IF n = 0 OR tok[1] <> '{{' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = 'imgsave: the document is not an object';
  END IF;
  -- The document's members: the scenes key must be there once.
  seen := 0;
  i := 2;
  IF tok[i] <> '}}' THEN
    LOOP
      k := tok[i]::json #>> '{{}}';
      v := i + 2;
      e := CASE WHEN tok[v] IN ('{{', '[') THEN closing[v] ELSE v END;
      IF k = {scenes_key} THEN
        seen := seen + 1;
        scenes_at := v;
      END IF;
      i := e + 1;
      EXIT WHEN tok[i] = '}}';
      i := i + 1;
    END LOOP;
  END IF;
  IF seen <> 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'imgsave: the document has the key %s %s times; refusing to guess which is meant',
      {scenes_key}, seen);
  END IF;
  -- The scene at `scene_position` (0-based) in the scenes array.
  i := scenes_at + 1;
  seen := 0;
  IF tok[i] <> ']' THEN
    LOOP
      e := CASE WHEN tok[i] IN ('{{', '[') THEN closing[i] ELSE i END;
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
  IF scene_at IS NULL OR tok[scene_at] <> '{{' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: no %s', place);
  END IF;
  -- The scene's members: identity keys and the list at most once each.
  i := scene_at + 1;
  IF tok[i] <> '}}' THEN
    LOOP
      k := tok[i]::json #>> '{{}}';
      v := i + 2;
      e := CASE WHEN tok[v] IN ('{{', '[') THEN closing[v] ELSE v END;
      IF k = {id_key} THEN ids := ids + 1; END IF;
      IF k = {index_key} THEN indexes := indexes + 1; END IF;
      IF k = {urls_key} THEN
        lists := lists + 1;
        urls_at := v;
      END IF;
      last_end := e;
      i := e + 1;
      EXIT WHEN tok[i] = '}}';
      i := i + 1;
    END LOOP;
  END IF;
  IF ids > 1 OR indexes > 1 OR lists > 1 THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format(
      'imgsave: %s has the key %s %s times; refusing to guess which is meant', place,
      CASE WHEN ids > 1 THEN {id_key} WHEN indexes > 1 THEN {index_key} ELSE {urls_key} END,
      greatest(ids, indexes, lists));
  END IF;
  encoded := array_to_string(ARRAY(SELECT to_json(u)::text FROM unnest(urls) AS u), ',');
  IF urls_at IS NULL THEN
    inserted := {urls_entry} || encoded || ']';
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
END"""
    return _function(
        table,
        SPLICE,
        "body text, scene_position integer, urls text[]",
        "text",
        body,
        volatility="IMMUTABLE",
    )


def _append(table: Table, shape: Shape, *, journaled: bool) -> str:
    j = "json" if table.keeps_text else "jsonb"
    key, doc = _id(table.key_column), _id(table.document_column)
    scenes_key, urls_key = _lit(shape.scenes_key), _lit(shape.urls_key)
    id_key, index_key = _lit(shape.id_key), _lit(shape.index_key)
    touch = f", {_id(table.updated_at_column)} = now()" if table.updated_at_column else ""
    if table.keeps_text:
        read = f"""\
  SELECT t.{doc}::text INTO raw FROM {_table(table)} AS t WHERE t.{key} = project FOR UPDATE;
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
      body := doc #>> '{{}}';
      doc := body::json;
    END IF;
  EXCEPTION WHEN data_exception THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document is '
      'not JSON', project);
  END;"""
        write = f"""\
  body := {_fn(table, SPLICE)}(body, target - 1, added);
  UPDATE {_table(table)} AS t
     SET {doc} = (CASE WHEN double THEN to_json(body)::text ELSE body END){
            "::json" if table.document_type == "json" else ""
        }{touch}
   WHERE t.{key} = project;"""
    else:
        read = f"""\
  SELECT t.{doc} INTO doc FROM {_table(table)} AS t WHERE t.{key} = project FOR UPDATE;
  IF NOT FOUND THEN
    RAISE EXCEPTION USING ERRCODE = 'P0002', MESSAGE = format('imgsave: project %s not found',
      project);
  END IF;
  IF doc IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document is '
      'null', project);
  END IF;
  IF jsonb_typeof(doc) = 'string' THEN
    double := true;
    body := doc #>> '{{}}';
    BEGIN
      doc := body::jsonb;
    EXCEPTION WHEN data_exception THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document '
        'is a string that is not JSON', project);
    END;
    -- The string keeps the app's spelling of numbers, which jsonb would normalise: an index
    -- written 1e0 or 1.0 is not an integer to imgsave, so not here either.
    IF EXISTS (
      SELECT FROM json_array_elements(CASE WHEN json_typeof(body::json -> {scenes_key}) = 'array'
                                           THEN body::json -> {scenes_key} ELSE '[]' END) AS e(s)
       WHERE json_typeof(s) = 'object' AND json_typeof(s -> {index_key}) = 'number'
         AND (s -> {index_key})::text !~ '^[1-9][0-9]*$')
    THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: a scene''s '
        '%s is not a positive integer', project, {index_key});
    END IF;
  END IF;"""
        write = f"""\
  doc := jsonb_set(doc, ARRAY[{scenes_key}, (target - 1)::text],
    (scenes -> (target - 1)) || jsonb_build_object({urls_key},
      coalesce(nullif(scenes -> (target - 1) -> {urls_key}, 'null'::jsonb), '[]'::jsonb)
      || to_jsonb(added)));
  UPDATE {_table(table)} AS t
     SET {doc} = CASE WHEN double THEN to_jsonb(doc::text) ELSE doc END{touch}
   WHERE t.{key} = project;"""
    announce = clear = ""
    if journaled:
        # The journal's trigger would otherwise diff the whole document, old and new, under the
        # row lock; this function knows exactly what it adds and says so, for this UPDATE only.
        announce = f"""\
  PERFORM pg_catalog.set_config({_lit(APPENDED)}, json_build_object(
    'position', target - 1,
    'scene_index', CASE WHEN indexes[target] < 1000000000 THEN indexes[target] ELSE target END,
    'scene_id', CASE WHEN {j}_typeof(scenes -> (target - 1) -> {id_key}) = 'string'
                     THEN scenes -> (target - 1) ->> {id_key} END,
    'urls', to_json(added))::text, true);
"""
        clear = f"  PERFORM pg_catalog.set_config({_lit(APPENDED)}, '', true);\n"
    body = f"""\
DECLARE
  raw text;
  body text;
  doc {j};
  double boolean := false;
  scenes {j};
  rec record;
  place text;
  sid text;
  eff numeric;
  ids text[] := '{{}}';
  indexes numeric[] := '{{}}';
  wanted numeric := CASE WHEN scene ~ '^[0-9]+$' THEN scene::numeric END;
  by_id integer;
  by_index integer;
  target integer;
  added text[] := '{{}}';
  url text;
  problem text;
BEGIN
  IF scene IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22004', MESSAGE = 'imgsave: scene is null';
  END IF;
  -- The URL rule first: a refused URL locks nothing and writes nothing.
  FOREACH url IN ARRAY coalesce(urls, '{{}}') LOOP
    problem := {_fn(table, URL_PROBLEM)}(url);
    IF problem IS NOT NULL THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: refusing %s: %s',
        coalesce(quote_literal(left(url, 200)), 'NULL'), problem);
    END IF;
  END LOOP;
{read}
  IF {j}_typeof(doc) <> 'object' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document is '
      '%s, not an object', project, {j}_typeof(doc));
  END IF;
  scenes := doc -> {scenes_key};
  IF scenes IS NULL THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: document '
      'has no %s key', project, {scenes_key});
  ELSIF {j}_typeof(scenes) <> 'array' THEN
    RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('imgsave: project %s: %s is %s, '
      'not an array', project, {scenes_key}, {j}_typeof(scenes));
  END IF;
  -- Every scene is checked, as imgsave's own save does: an ambiguous document is not written.
  FOR rec IN
    SELECT e.n::integer AS pos, {j}_typeof(e.s) AS kind, e.s -> {id_key} AS sid,
           e.s -> {index_key} AS idx, {j}_typeof(e.s -> {urls_key}) AS list
      FROM {j}_array_elements(scenes) WITH ORDINALITY AS e(s, n)
  LOOP
    place := format('imgsave: project %s: scene at position %s', project, rec.pos);
    IF rec.kind <> 'object' THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s is %s, not an object', place,
        rec.kind);
    END IF;
    sid := NULL;
    IF rec.sid IS NOT NULL AND {j}_typeof(rec.sid) <> 'null' THEN
      IF {j}_typeof(rec.sid) <> 'string' THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: %s is not a string',
          place, {id_key});
      END IF;
      sid := rec.sid #>> '{{}}';
      IF sid = ANY (ids) THEN
        RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s shares id %s with an '
          'earlier scene; refusing to guess which one is meant', place, quote_literal(sid));
      END IF;
      ids := ids || sid;
      IF by_id IS NULL AND sid = scene THEN by_id := rec.pos; END IF;
    END IF;
    IF rec.idx IS NULL OR {j}_typeof(rec.idx) = 'null' THEN
      eff := rec.pos;
    ELSIF {j}_typeof(rec.idx) = 'number' AND rec.idx::text ~ '^[1-9][0-9]*$'
          AND length(rec.idx::text) <= 4000 THEN
      eff := rec.idx::text::numeric;
    ELSE
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: %s is not a positive '
        'integer', place, {index_key});
    END IF;
    IF eff = ANY (indexes) THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s shares index %s with an '
        'earlier scene; refusing to guess which one is meant', place, eff);
    END IF;
    indexes := indexes || eff;
    IF eff = wanted THEN by_index := rec.pos; END IF;
    IF rec.list IS NOT NULL AND rec.list NOT IN ('array', 'null') THEN
      RAISE EXCEPTION USING ERRCODE = '22023', MESSAGE = format('%s: %s is not an array', place,
        {urls_key});
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
  SELECT coalesce(array_agg(t.u ORDER BY t.n), '{{}}') INTO added
    FROM (SELECT u, min(n) AS n FROM unnest(coalesce(urls, '{{}}')) WITH ORDINALITY AS g(u, n)
           GROUP BY u) AS t
   WHERE NOT EXISTS (
     SELECT FROM {j}_array_elements(
                   CASE WHEN {j}_typeof(scenes -> (target - 1) -> {urls_key}) = 'array'
                        THEN scenes -> (target - 1) -> {urls_key} ELSE '[]'::{j} END) AS x
      WHERE {j}_typeof(x) = 'string' AND x #>> '{{}}' = t.u);
  IF cardinality(added) = 0 THEN
    RETURN 0;
  END IF;
{announce}{write}
{clear}  RETURN cardinality(added);
END"""
    return _function(
        table, APPEND, f"project {table.key_type}, scene text, urls text[]", "integer", body
    )


def _privileges(table: Table, options: Options) -> str:
    """EXECUTE for the configured roles only. REVOKE ... FROM PUBLIC is not enough on Supabase,
    whose default privileges grant every new function to its API roles, `anon` included."""
    signatures = [
        f"{_fn(table, APPEND)}({table.key_type}, text, text[])",
        f"{_fn(table, URL_PROBLEM)}(text)",
    ]
    if table.keeps_text:
        signatures.append(f"{_fn(table, SPLICE)}(text, integer, text[])")
    lines = [f"REVOKE ALL ON FUNCTION {s} FROM PUBLIC;" for s in signatures]
    granted = SUPABASE_ROLES if options.grant is None else options.grant
    # (role, statement with FN for each signature), run only where the role exists.
    conditional = [
        (r, f"REVOKE ALL ON FUNCTION FN FROM {_id(r)}") for r in API_ROLES if r not in granted
    ]
    if options.grant is None:
        conditional += [(r, f"GRANT EXECUTE ON FUNCTION FN TO {_id(r)}") for r in SUPABASE_ROLES]
    else:
        lines += [f"GRANT EXECUTE ON FUNCTION {s} TO {_roles(options.grant)};" for s in signatures]
    if conditional:
        block = ["BEGIN"]
        for role, template in conditional:
            block.append(
                f"  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_lit(role)}) THEN"
            )
            block += [f"    EXECUTE {_lit(template.replace('FN', s))};" for s in signatures]
            block.append("  END IF;")
        block.append("END")
        lines.append(f"DO {_body(chr(10).join(block))};")
    return "\n".join(lines)


def _roles(roles: Sequence[str]) -> str:
    return ", ".join(_id(r) for r in roles)


def claims_table(schema: str) -> str:
    """The table through which runs on several hosts share out scenes (operations/claims.py):
    a claim names its run and host and expires unless the run extends it."""
    claims = sql.Identifier(schema, CLAIMS).as_string(None)
    return f"""\
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
CREATE INDEX IF NOT EXISTS {_id(CLAIMS + "_run")} ON {claims} (run);
-- Kept from the app's API roles; for imgsave running as another role than the owner:
-- GRANT SELECT, INSERT, UPDATE, DELETE ON {claims} TO that role.
{_private(claims, rls=False)}"""


def _private(table: str, *, rls: bool = True) -> str:
    """Statements that keep `table` from PUBLIC and the Supabase API roles. With `rls`, also
    row-level security with no policy, so only the owner can use it even where a privilege
    was granted (the journal); without, the owner may grant it to imgsave's own role."""
    revoke = f"""\
DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY{list(API_ROLES)!r}::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format({_lit("REVOKE ALL ON " + table.replace("%", "%%") + " FROM %I")}, r);
    END IF;
  END LOOP;
END"""
    secure = f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n" if rls else ""
    return f"REVOKE ALL ON {table} FROM PUBLIC;\n{secure}DO {_body(revoke)};"


def _journal(table: Table, shape: Shape) -> str:
    journal = _fn(table, JOURNAL)
    key, doc = _id(table.key_column), _id(table.document_column)
    scenes_key, urls_key = _lit(shape.scenes_key), _lit(shape.urls_key)
    id_key, index_key = _lit(shape.id_key), _lit(shape.index_key)
    create = f"""\
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
CREATE INDEX IF NOT EXISTS {_id(JOURNAL + "_at")} ON {journal} (at);
CREATE INDEX IF NOT EXISTS {_id(JOURNAL + "_project")} ON {journal} (project, id);
-- Only the trigger (as its owner) writes it; only the owner reads it.
{_private(journal)}"""
    scenes_fn = _function(
        table,
        JOURNAL_SCENES,
        "doc jsonb",
        "TABLE (scene text, scene_index integer, scene_id text, urls jsonb)",
        f"""\
  -- Never raises: a document imgsave would refuse is still the app's to write, and its URLs are
  -- still recorded. A scene is keyed by its id, else by its index (else its position).
  SELECT coalesce('id:' || e.sid, 'index:' || e.eff), e.eff, e.sid,
         CASE WHEN jsonb_typeof(e.s -> {urls_key}) = 'array' THEN e.s -> {urls_key}
              ELSE '[]' END
    FROM (SELECT s, CASE WHEN jsonb_typeof(s -> {id_key}) = 'string' THEN s ->> {id_key} END
                    AS sid,
                 CASE WHEN jsonb_typeof(s -> {index_key}) = 'number'
                       AND s ->> {index_key} ~ '^[1-9][0-9]{{0,8}}$'
                      THEN (s ->> {index_key})::integer ELSE n::integer END AS eff
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(doc -> {scenes_key}) = 'array'
                                           THEN doc -> {scenes_key} ELSE '[]' END)
                 WITH ORDINALITY AS a(s, n)
           WHERE jsonb_typeof(s) = 'object') AS e""",
        language="sql",
        volatility="IMMUTABLE",
    )
    parse_fn = _function(
        table,
        JOURNAL_PARSE,
        "value text, unwrap boolean",
        "jsonb",
        """\
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
END""",
        volatility="IMMUTABLE",
    )
    if table.keeps_text:
        document = f"{_fn(table, JOURNAL_PARSE)}(NEW.{doc}::text, true)"
        changed = f"OLD.{doc}::text IS DISTINCT FROM NEW.{doc}::text"
    else:
        # jsonb: parsed already; only a document stored as a JSON string needs parsing.
        document = (
            f"CASE WHEN jsonb_typeof(NEW.{doc}) = 'string' "
            f"THEN {_fn(table, JOURNAL_PARSE)}(NEW.{doc} #>> '{{}}', false) ELSE NEW.{doc} END"
        )
        changed = f"OLD.{doc} IS DISTINCT FROM NEW.{doc}"
    record = _function(
        table,
        JOURNAL_RECORD,
        "",
        "trigger",
        f"""\
DECLARE
  appended jsonb;
  pos text;
  old_doc jsonb;
  new_doc jsonb;
BEGIN
  BEGIN
    appended := nullif(pg_catalog.current_setting({_lit(APPENDED)}, true), '')::jsonb;
  EXCEPTION WHEN data_exception THEN
    appended := NULL;  -- set to something else by someone else: not the append function's
  END;
  new_doc := {document};
  IF TG_OP = 'UPDATE' THEN
    old_doc := {document.replace("NEW.", "OLD.")};
  END IF;
  pos := appended ->> 'position';
  -- The append function's own UPDATE says what it added, sparing the diff below. Anyone who
  -- may UPDATE the table can set that setting too, so it is believed only when the write is
  -- exactly that: the old document with those URLs appended to that scene's list.
  IF jsonb_typeof(appended -> 'urls') = 'array' AND pos ~ '^[0-9]{{1,9}}$'
     AND jsonb_typeof(old_doc -> {scenes_key} -> pos::integer) = 'object'
     AND new_doc = jsonb_set(old_doc, ARRAY[{scenes_key}, pos],
           (old_doc -> {scenes_key} -> pos::integer) || jsonb_build_object({urls_key},
             coalesce(nullif(old_doc -> {scenes_key} -> pos::integer -> {urls_key},
                             'null'::jsonb), '[]'::jsonb) || (appended -> 'urls')))
  THEN
    INSERT INTO {journal} (project, scene_index, scene_id, url, change)
    SELECT NEW.{key}::text, (appended ->> 'scene_index')::integer, appended ->> 'scene_id', u,
           'added'
      FROM jsonb_array_elements_text(appended -> 'urls') AS u;
    RETURN NULL;
  END IF;
  -- Only the scenes whose list changed are taken apart: a write that adds one URL to a big
  -- document costs one scene's list, not every URL in it.
  WITH o AS (SELECT * FROM {_fn(table, JOURNAL_SCENES)}(old_doc)),
       n AS (SELECT * FROM {_fn(table, JOURNAL_SCENES)}(new_doc)),
       changed AS (SELECT o.scene AS o_scene, o.scene_index AS o_index, o.scene_id AS o_id,
                          o.urls AS o_urls, n.scene AS n_scene, n.scene_index AS n_index,
                          n.scene_id AS n_id, n.urls AS n_urls
                     FROM o FULL JOIN n ON n.scene = o.scene
                    WHERE o.urls IS DISTINCT FROM n.urls),
       was AS (SELECT c.o_scene AS scene, c.o_index AS scene_index, c.o_id AS scene_id,
                      x #>> '{{}}' AS url
                 FROM changed AS c, jsonb_array_elements(coalesce(c.o_urls, '[]')) AS x
                WHERE jsonb_typeof(x) = 'string'),
       now_ AS (SELECT c.n_scene AS scene, c.n_index AS scene_index, c.n_id AS scene_id,
                       x #>> '{{}}' AS url
                  FROM changed AS c, jsonb_array_elements(coalesce(c.n_urls, '[]')) AS x
                 WHERE jsonb_typeof(x) = 'string'),
       gone AS (SELECT * FROM was AS w WHERE NOT EXISTS
                  (SELECT FROM now_ AS v WHERE v.scene = w.scene AND v.url = w.url)),
       came AS (SELECT * FROM now_ AS v WHERE NOT EXISTS
                  (SELECT FROM was AS w WHERE w.scene = v.scene AND w.url = v.url))
  INSERT INTO {journal} (project, scene_index, scene_id, url, change, scene_replaced)
  SELECT NEW.{key}::text, c.scene_index, c.scene_id, c.url, 'added', false FROM came AS c
  UNION ALL
  SELECT NEW.{key}::text, g.scene_index, g.scene_id, g.url, 'removed',
         EXISTS (SELECT FROM came AS c WHERE c.scene = g.scene)
         AND NOT EXISTS (SELECT FROM was AS w JOIN now_ AS v USING (scene, url)
                          WHERE w.scene = g.scene)
    FROM gone AS g;
  RETURN NULL;
END""",
        security="SECURITY DEFINER",
    )
    triggers = f"""\
-- Two triggers, one function. An UPDATE that does not set the document costs nothing more (a
-- BEFORE trigger of the app's that rewrites the document on such an UPDATE is not seen); one
-- that sets it to what it was costs a comparison; the append function's costs one INSERT.
DROP TRIGGER IF EXISTS {_id(JOURNAL + "_insert")} ON {_table(table)};
CREATE TRIGGER {_id(JOURNAL + "_insert")} AFTER INSERT ON {_table(table)}
  FOR EACH ROW EXECUTE FUNCTION {_fn(table, JOURNAL_RECORD)}();
DROP TRIGGER IF EXISTS {_id(JOURNAL + "_update")} ON {_table(table)};
CREATE TRIGGER {_id(JOURNAL + "_update")} AFTER UPDATE OF {doc} ON {_table(table)}
  FOR EACH ROW
  WHEN (pg_catalog.current_setting({_lit(APPENDED)}, true) <> '' OR ({changed}))
  EXECUTE FUNCTION {_fn(table, JOURNAL_RECORD)}();"""
    revoke = "\n".join(
        f"REVOKE ALL ON FUNCTION {_fn(table, name)}({args}) FROM PUBLIC;"
        for name, args in (
            (JOURNAL_SCENES, "jsonb"),
            (JOURNAL_PARSE, "text, boolean"),
            (JOURNAL_RECORD, ""),
        )
    )
    # An internal helper whose result shape may change between versions of imgsave, which
    # CREATE OR REPLACE cannot do; nothing holds on to it between calls.
    replace_scenes = f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_SCENES)}(jsonb);"
    return "\n\n".join([create, replace_scenes, scenes_fn, parse_fn, record, triggers, revoke])
