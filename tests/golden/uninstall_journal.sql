-- imgsave: uninstall
DO $imgsave$
BEGIN
  IF to_regclass('"public"."imgsave_ledger"') IS NOT NULL THEN
    IF EXISTS (SELECT FROM "public"."imgsave_ledger" WHERE state IN ('requested', 'received', 'stored')) THEN
      RAISE EXCEPTION 'imgsave_ledger holds purchases not yet in their scenes' USING HINT = 'run imgsave repair --execute (and let batches finish) first';
    END IF;
  END IF;
END
$imgsave$;
DROP FUNCTION IF EXISTS "public"."imgsave_append_image_urls"(text, text, text[]);
DROP FUNCTION IF EXISTS "public"."imgsave_splice_image_urls"(text, integer, text[]);
DROP FUNCTION IF EXISTS "public"."imgsave_url_problem"(text);
DROP TABLE IF EXISTS "public"."imgsave_claims";
DROP TABLE IF EXISTS "public"."imgsave_batches";
DROP TABLE IF EXISTS "public"."imgsave_ledger";
DROP TABLE IF EXISTS "public"."imgsave_meta";
DROP TRIGGER IF EXISTS "imgsave_journal_insert" ON "public"."projects";
DROP TRIGGER IF EXISTS "imgsave_journal_update" ON "public"."projects";
DROP FUNCTION IF EXISTS "public"."imgsave_journal_record"();
DROP FUNCTION IF EXISTS "public"."imgsave_journal_scenes"(jsonb);
DROP FUNCTION IF EXISTS "public"."imgsave_journal_parse"(text, boolean);
DROP TABLE IF EXISTS "public"."imgsave_journal";
