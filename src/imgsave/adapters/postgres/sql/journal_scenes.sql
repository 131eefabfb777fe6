  -- Never raises: a document imgsave would refuse is still the app's to write, and its URLs are
  -- still recorded. A scene is keyed by its id, else by its index (else its position).
  SELECT coalesce('id:' || e.sid, 'index:' || e.eff), e.eff, e.sid,
         CASE WHEN jsonb_typeof(e.s -> {urls_key}) = 'array' THEN e.s -> {urls_key}
              ELSE '[]' END
    FROM (SELECT s, CASE WHEN jsonb_typeof(s -> {id_key}) = 'string' THEN s ->> {id_key} END
                    AS sid,
                 CASE WHEN jsonb_typeof(s -> {index_key}) = 'number'
                       AND s ->> {index_key} ~ '^[1-9][0-9]{0,8}$'
                      THEN (s ->> {index_key})::integer ELSE n::integer END AS eff
            FROM jsonb_array_elements(CASE WHEN jsonb_typeof(doc -> {scenes_key}) = 'array'
                                           THEN doc -> {scenes_key} ELSE '[]' END)
                 WITH ORDINALITY AS a(s, n)
           WHERE jsonb_typeof(s) = 'object') AS e
