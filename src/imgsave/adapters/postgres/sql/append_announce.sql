  PERFORM pg_catalog.set_config({appended}, json_build_object(
    'position', target - 1,
    'scene_index', CASE WHEN indexes[target] < 1000000000 THEN indexes[target] ELSE target END,
    'scene_id', CASE WHEN {j}_typeof(scenes -> (target - 1) -> {id_key}) = 'string'
                     THEN scenes -> (target - 1) ->> {id_key} END,
    'urls', to_json(added))::text, true);
