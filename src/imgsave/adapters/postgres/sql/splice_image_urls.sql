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
            FROM regexp_matches(body, {token}, 'g') WITH ORDINALITY AS m(parts, n)) AS t;
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
      IF k = {scenes_key} THEN
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
      {scenes_key}, seen);
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
      IF k = {id_key} THEN ids := ids + 1; END IF;
      IF k = {index_key} THEN indexes := indexes + 1; END IF;
      IF k = {urls_key} THEN
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
END
