DECLARE
  appended jsonb;
  pos text;
  old_doc jsonb;
  new_doc jsonb;
BEGIN
  BEGIN
    appended := nullif(pg_catalog.current_setting({appended}, true), '')::jsonb;
  EXCEPTION WHEN data_exception THEN
    appended := NULL;  -- set to something else by someone else: not the append function's
  END;
  new_doc := {new_document};
  IF TG_OP = 'UPDATE' THEN
    old_doc := {old_document};
  END IF;
  pos := appended ->> 'position';
  -- The append function's own UPDATE says what it added, sparing the diff below. Anyone who
  -- may UPDATE the table can set that setting too, so it is believed only when the write is
  -- exactly that: the old document with those URLs appended to that scene's list.
  IF jsonb_typeof(appended -> 'urls') = 'array' AND pos ~ '^[0-9]{1,9}$'
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
  WITH o AS (SELECT * FROM {scenes_fn}(old_doc)),
       n AS (SELECT * FROM {scenes_fn}(new_doc)),
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
  INSERT INTO {journal} (project, scene_index, scene_id, url, change, scene_replaced)
  SELECT NEW.{key}::text, c.scene_index, c.scene_id, c.url, 'added', false FROM came AS c
  UNION ALL
  SELECT NEW.{key}::text, g.scene_index, g.scene_id, g.url, 'removed',
         EXISTS (SELECT FROM came AS c WHERE c.scene = g.scene)
         AND NOT EXISTS (SELECT FROM was AS w JOIN now_ AS v USING (scene, url)
                          WHERE w.scene = g.scene)
    FROM gone AS g;
  RETURN NULL;
END
