-- Two triggers, one function. An UPDATE that does not set the document costs nothing more (a
-- BEFORE trigger of the app's that rewrites the document on such an UPDATE is not seen); one
-- that sets it to what it was costs a comparison; the append function's costs one INSERT.
DROP TRIGGER IF EXISTS {insert_trigger} ON {table};
CREATE TRIGGER {insert_trigger} AFTER INSERT ON {table}
  FOR EACH ROW EXECUTE FUNCTION {record_fn}();
DROP TRIGGER IF EXISTS {update_trigger} ON {table};
CREATE TRIGGER {update_trigger} AFTER UPDATE OF {doc} ON {table}
  FOR EACH ROW
  WHEN (pg_catalog.current_setting({appended}, true) <> '' OR ({changed}))
  EXECUTE FUNCTION {record_fn}();
