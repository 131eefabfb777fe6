  body := {splice_fn}(body, target - 1, added);
  UPDATE {table} AS t
     SET {doc} = (CASE WHEN double THEN to_json(body)::text ELSE body END){json_cast}{touch}
   WHERE t.{key} = project;
