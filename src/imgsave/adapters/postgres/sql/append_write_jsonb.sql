  doc := jsonb_set(doc, ARRAY[{scenes_key}, (target - 1)::text],
    (scenes -> (target - 1)) || jsonb_build_object({urls_key},
      coalesce(nullif(scenes -> (target - 1) -> {urls_key}, 'null'::jsonb), '[]'::jsonb)
      || to_jsonb(added)));
  UPDATE {table} AS t
     SET {doc} = CASE WHEN double THEN to_jsonb(doc::text) ELSE doc END{touch}
   WHERE t.{key} = project;
