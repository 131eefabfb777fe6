-- imgsave: uninstall
DROP FUNCTION IF EXISTS "public"."imgsave_append_image_urls"(text, text, text[]);
DROP FUNCTION IF EXISTS "public"."imgsave_splice_image_urls"(text, integer, text[]);
DROP FUNCTION IF EXISTS "public"."imgsave_url_problem"(text);
DROP TABLE IF EXISTS "public"."imgsave_claims";
DROP TABLE IF EXISTS "public"."imgsave_batches";
DROP TRIGGER IF EXISTS "imgsave_journal_insert" ON "public"."projects";
DROP TRIGGER IF EXISTS "imgsave_journal_update" ON "public"."projects";
DROP FUNCTION IF EXISTS "public"."imgsave_journal_record"();
DROP FUNCTION IF EXISTS "public"."imgsave_journal_scenes"(jsonb);
DROP FUNCTION IF EXISTS "public"."imgsave_journal_parse"(text, boolean);
DROP TABLE IF EXISTS "public"."imgsave_journal";
