  SELECT t.{doc} INTO doc FROM {table} AS t WHERE t.{key} = project FOR UPDATE;
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
    body := doc #>> '{}';
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
  END IF;
