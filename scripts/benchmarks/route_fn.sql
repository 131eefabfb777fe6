-- The app's route fixed at the root: one call of imgsave's SQL function per image, as
-- supabase-js rpc() makes it.
\set scene random(1, 20)
SELECT imgsave_append_image_urls('hot', 'scene-' || :scene,
  ARRAY['https://img.bench/fn/' || :client_id || '-' || random()::text]);
