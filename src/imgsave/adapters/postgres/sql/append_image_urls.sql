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
    problem := {url_problem_fn}(url);
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
      sid := rec.sid #>> '{}';
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
  SELECT coalesce(array_agg(t.u ORDER BY t.n), '{}') INTO added
    FROM (SELECT u, min(n) AS n FROM unnest(coalesce(urls, '{}')) WITH ORDINALITY AS g(u, n)
           GROUP BY u) AS t
   WHERE NOT EXISTS (
     SELECT FROM {j}_array_elements(
                   CASE WHEN {j}_typeof(scenes -> (target - 1) -> {urls_key}) = 'array'
                        THEN scenes -> (target - 1) -> {urls_key} ELSE '[]'::{j} END) AS x
      WHERE {j}_typeof(x) = 'string' AND x #>> '{}' = t.u);
  IF cardinality(added) = 0 THEN
    RETURN 0;
  END IF;
{announce}{write}
{clear}  RETURN cardinality(added);
END
