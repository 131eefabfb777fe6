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
