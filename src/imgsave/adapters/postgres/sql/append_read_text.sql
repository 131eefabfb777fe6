  SELECT t.{doc}::text INTO raw FROM {table} AS t WHERE t.{key} = project FOR UPDATE;
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
