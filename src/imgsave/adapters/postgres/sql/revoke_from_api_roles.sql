DECLARE
  r text;
BEGIN
  FOREACH r IN ARRAY ARRAY{api_roles}::text[] LOOP
    IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = r) THEN
      EXECUTE format({revoke_statement}, r);
    END IF;
  END LOOP;
END
