-- The incident's save done right but one image per transaction: pgbench's baseline for
-- imgsave's group commit on one hot row.
\set scene random(0, 19)
BEGIN;
SELECT set_config('lock_timeout', '5000ms', true), set_config('statement_timeout', '30000ms', true);
SELECT generated_output FROM projects WHERE id = 'hot' FOR UPDATE;
UPDATE projects SET generated_output = jsonb_set(generated_output,
  ARRAY['scenes', :scene::text, 'imageUrls'],
  COALESCE(generated_output #> ARRAY['scenes', :scene::text, 'imageUrls'], '[]'::jsonb)
    || to_jsonb('https://img.bench/pgbench/' || :client_id || '-' || random()::text), true),
  updated_at = now() WHERE id = 'hot';
COMMIT;
