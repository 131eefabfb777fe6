"""The SQL `imgsave sql` installs in the app's own database. Pure: text in, text out.

The SQL itself is in `sql/*.sql` beside this module, as SQL; this module fills their
`{placeholders}` with psycopg.sql (`Identifier` for the configured table, column and function
names, `Literal` for the document's keys), so quoting is psycopg's by construction. The golden
files in tests/golden hold the result.

Two parts, for the configured table, column and key names:

- `imgsave_append_image_urls(project, scene, urls)`: imgsave's save as a function the app's
  route calls instead of its fetch-modify-write (supabase-js `rpc()`, or plain SQL). Same rules
  as `saver`: the row taken with `FOR UPDATE`, the scene found by id, else index, else position,
  ambiguous documents refused, append-if-absent, both storage forms, json and text columns
  spliced byte for byte (as `jsontext` does), `updated_at = now()`, the URL rule enforced.
  `SECURITY INVOKER`, so the caller's own rights and row-level security apply.
- the journal (`--journal`): a table and an `AFTER INSERT OR UPDATE` trigger that record every
  URL that appears in or disappears from a scene, whoever wrote it. The trigger function is
  `SECURITY DEFINER`: the app's roles write the journal through it without any right on it.

Every function pins `search_path` to `pg_catalog, pg_temp` and names imgsave's own objects with
their schema, so a function or operator planted earlier in a caller's path is never the one run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources

from psycopg import sql

from imgsave.core.documents import Shape
from imgsave.core.url_rule import MAX_URL_LENGTH

APPEND = "imgsave_append_image_urls"
URL_PROBLEM = "imgsave_url_problem"
SPLICE = "imgsave_splice_image_urls"
JOURNAL = "imgsave_journal"
JOURNAL_RECORD = "imgsave_journal_record"
JOURNAL_SCENES = "imgsave_journal_scenes"
JOURNAL_PARSE = "imgsave_journal_parse"
CLAIMS = "imgsave_claims"
BATCHES = "imgsave_batches"
LEDGER = "imgsave_ledger"
META = "imgsave_meta"
# The ledger's states of an image paid for and not yet in its scene (or given up on).
UNRESOLVED = ("requested", "received", "stored")
# A transaction-local setting: what the append function's own UPDATE adds (see _append).
APPENDED = "imgsave.appended"
# On Supabase these are the API's roles: `authenticated` (a signed-in user, under row-level
# security) and `service_role` (the server's key, which bypasses it). `anon` never gets it.
SUPABASE_ROLES = ("authenticated", "service_role")
API_ROLES = ("anon", "authenticated", "service_role")
# What RFC 3986 lets a URL carry unescaped (the URL rule in `urls`); all of it ASCII.
_URL_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~:/?#[]@!$&'()*+,;=%"
# One JSON token and the whitespace before it: a string, a punctuation mark, or a literal or
# number. Matched in order over valid JSON, the tokens tile the text (only trailing whitespace
# is left over), so their lengths give each token's offset.
_TOKEN = r'([ \t\n\r]*)("(?:[^"\\]|\\.)*"|[][{}:,]|[^][{}:," \t\n\r]+)'


@dataclass(frozen=True)
class Table:
    """The app's table as the database describes it (`Database.describe`)."""

    schema: str
    name: str
    key_column: str
    # As format_type() spells it (text, uuid, bigint, character varying(64)): SQL already, from
    # the catalog, never from the user; written into the SQL as it is.
    key_type: str
    document_column: str
    document_type: str  # jsonb, json, text, character varying
    updated_at_column: str | None  # None when the table has no such timestamp column

    @property
    def keeps_text(self) -> bool:
        return self.document_type != "jsonb"


@dataclass(frozen=True)
class Options:
    journal: bool = False
    # Roles given EXECUTE; None: `authenticated` and `service_role` where they exist (Supabase).
    grant: tuple[str, ...] | None = None
    allow_http: bool = False


def install(table: Table, shape: Shape, options: Options) -> str:
    """The migration: idempotent (`CREATE OR REPLACE`, `IF NOT EXISTS`), to run in one
    transaction."""
    parts = [_header(table, options), _url_problem(table, options)]
    if table.keeps_text:
        parts.append(_splice(table, shape))
    parts.append(_append(table, shape, journaled=options.journal))
    parts.append(_privileges(table, options))
    parts.append(claims_table(table.schema))
    parts.append(meta_table(table.schema))
    parts.append(ledger_table(table.schema))
    parts.append(batches_table(table.schema))
    if options.journal:
        parts.append(_journal(table, shape))
    return "\n\n".join(parts) + "\n"


def uninstall(table: Table, options: Options) -> str:
    """Drops what `install` with the same options created, and nothing else: without
    `journal` the journal (and the trigger that the app's writes go through) stays. The ledger
    and the batches table go only while no purchase in them is unresolved (paid for and not
    yet in its scene): with one, the whole script stops and says so, having removed nothing."""
    ledger, batches = _fn(table, LEDGER), _fn(table, BATCHES)
    guard = _body(
        "BEGIN\n"
        f"  IF to_regclass({_lit(ledger)}) IS NOT NULL THEN\n"
        f"    IF EXISTS (SELECT FROM {ledger} WHERE state IN {_states(UNRESOLVED)}) THEN\n"
        f"      RAISE EXCEPTION {_lit(LEDGER + ' holds purchases not yet in their scenes')} "
        f"USING HINT = {_lit('run imgsave repair --execute (and let batches finish) first')};\n"
        "    END IF;\n"
        "  END IF;\n"
        "END"
    )
    statements = [
        f"DO {guard};",
        f"DROP FUNCTION IF EXISTS {_fn(table, APPEND)}({table.key_type}, text, text[]);",
        f"DROP FUNCTION IF EXISTS {_fn(table, SPLICE)}(text, integer, text[]);",
        f"DROP FUNCTION IF EXISTS {_fn(table, URL_PROBLEM)}(text);",
        f"DROP TABLE IF EXISTS {_fn(table, CLAIMS)};",
        f"DROP TABLE IF EXISTS {batches};",
        f"DROP TABLE IF EXISTS {ledger};",
        f"DROP TABLE IF EXISTS {_fn(table, META)};",
    ]
    if options.journal:
        statements += [
            f"DROP TRIGGER IF EXISTS {_id(JOURNAL + '_insert')} ON {_table(table)};",
            f"DROP TRIGGER IF EXISTS {_id(JOURNAL + '_update')} ON {_table(table)};",
            f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_RECORD)}();",
            f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_SCENES)}(jsonb);",
            f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_PARSE)}(text, boolean);",
            f"DROP TABLE IF EXISTS {_fn(table, JOURNAL)};",
        ]
    return "\n".join(["-- imgsave: uninstall", *statements]) + "\n"


def new_identity(schema: str) -> str:
    """Give this database an identity of its own: for a copy restored from another database's
    snapshot, which would otherwise collect that database's batches and jobs as its own."""
    meta = sql.Identifier(schema, META).as_string(None)
    return (
        f"-- imgsave: a new identity for this database (run it on a restored copy)\n"
        f"{meta_table(schema)}\n"
        f"UPDATE {meta} SET value = gen_random_uuid()::text, updated_at = now() "
        "WHERE key = 'database_id';\n"
    )


def _states(states: Sequence[str]) -> str:
    return "(" + ", ".join(_lit(s) for s in states) + ")"


def _header(table: Table, options: Options) -> str:
    what = "the append function, imgsave's claims, ledger and batches tables" + (
        " and the journal" if options.journal else ""
    )
    # Names quoted even in a comment: a newline in one must not end the comment.
    return (
        f"-- imgsave: {what} for {_table(table)}"
        f" ({_id(table.key_column)} {table.key_type}, {_id(table.document_column)}"
        f" {table.document_type}).\n"
        "-- Run it in one transaction: a migration, or psql --single-transaction -f FILE.\n"
        "-- Safe to run again; `imgsave sql --uninstall` prints what removes it."
    )


def _id(name: str) -> str:
    return sql.Identifier(name).as_string(None)


def _lit(value: str) -> str:
    return sql.Literal(value).as_string(None).strip()


def _literal(value: str) -> sql.SQL:
    """A literal as psycopg quotes it, without the space it puts before an E'' string."""
    return sql.SQL(_lit(value))


def _keys(shape: Shape) -> dict[str, sql.Composable]:
    """The document's key names, as literals: what every template that reads a document uses."""
    return {
        "scenes_key": _literal(shape.scenes_key),
        "urls_key": _literal(shape.urls_key),
        "id_key": _literal(shape.id_key),
        "index_key": _literal(shape.index_key),
    }


# A template's placeholders: {name}. Every other brace in a .sql file is the SQL's own.
_PLACEHOLDER = re.compile(r"\{\{([a-z_]+)\}\}")


def _template(name: str, **values: sql.Composable) -> str:
    """sql/NAME filled in: each {placeholder} by psycopg.sql (identifiers quoted as such,
    literals as literals), so no name from the configuration is pasted into SQL as text."""
    text = (resources.files(__package__) / "sql" / name).read_text(encoding="utf-8")
    escaped = text.removesuffix("\n").replace("{", "{{").replace("}", "}}")

    def placeholder(match: re.Match[str]) -> str:
        if match[1] not in values:
            raise KeyError(f"sql/{name}: no value for {{{match[1]}}}")
        return "{" + match[1] + "}"

    filled: str = sql.SQL(_PLACEHOLDER.sub(placeholder, escaped)).format(**values).as_string(None)
    return filled


def _fn(table: Table, name: str) -> str:
    return _function_name(table, name).as_string(None)


def _function_name(table: Table, name: str) -> sql.Identifier:
    return sql.Identifier(table.schema, name)


def _table(table: Table) -> str:
    return _table_name(table).as_string(None)


def _table_name(table: Table) -> sql.Identifier:
    return sql.Identifier(table.schema, table.name)


def _body(text: str) -> str:
    """`text` dollar-quoted with a tag it cannot contain."""
    tag = "imgsave"
    while f"${tag}$" in text:
        tag += "_"
    return f"${tag}$\n{text}\n${tag}$"


def _function(
    table: Table,
    name: str,
    arguments: str,
    returns: str,
    body: str,
    *,
    language: str = "plpgsql",
    volatility: str = "VOLATILE",
    security: str = "SECURITY INVOKER",
) -> str:
    if language == "plpgsql":
        # A table column named like a parameter (project, scene) must not make a query ambiguous.
        body = "#variable_conflict use_variable\n" + body
    return (
        f"CREATE OR REPLACE FUNCTION {_fn(table, name)}({arguments})\n"
        f"RETURNS {returns}\nLANGUAGE {language} {volatility} {security}\n"
        "SET search_path = pg_catalog, pg_temp\n"
        # Small queries the planner over-costs (a set-returning function is guessed at 1,000
        # rows): JIT would spend ~50 ms compiling each, under the row lock.
        "SET jit = off\n"
        f"AS {_body(body)};"
    )


def _url_problem(table: Table, options: Options) -> str:
    schemes = ("https://", "http://") if options.allow_http else ("https://",)
    allowed = sql.SQL(" OR ").join(
        sql.SQL("lower(left(url, {})) = {}").format(len(s), _literal(s)) for s in schemes
    )
    only = " or ".join(s.rstrip(":/") for s in schemes)
    body = _template(
        "url_problem.sql",
        max_url_length=sql.SQL(str(MAX_URL_LENGTH)),
        url_chars=_literal(_URL_CHARS),
        allowed=allowed,
        scheme_refused=_literal(f"URL scheme is not allowed (only {only})"),
    )
    return _function(table, URL_PROBLEM, "url text", "text", body, volatility="IMMUTABLE")


def _splice(table: Table, shape: Shape) -> str:
    """For json and text columns: append to one scene's list in the text itself, so every
    other byte stays as stored (core/json_splice.splice_append, the same edits)."""
    body = _template(
        "splice_image_urls.sql",
        token=_literal(_TOKEN),
        # The key as Python's json.dumps writes it, so both writers insert the same bytes.
        urls_entry=_literal(json.dumps(shape.urls_key) + ":["),
        **_keys(shape),
    )
    return _function(
        table,
        SPLICE,
        "body text, scene_position integer, urls text[]",
        "text",
        body,
        volatility="IMMUTABLE",
    )


def _append(table: Table, shape: Shape, *, journaled: bool) -> str:
    names = {
        "table": _table_name(table),
        "doc": sql.Identifier(table.document_column),
        "key": sql.Identifier(table.key_column),
        "touch": sql.SQL(", {} = now()").format(sql.Identifier(table.updated_at_column))
        if table.updated_at_column
        else sql.SQL(""),
        **_keys(shape),
    }
    if table.keeps_text:
        read = _template("append_read_text.sql", **names)
        cast = sql.SQL("::json" if table.document_type == "json" else "")
        write = _template(
            "append_write_text.sql",
            splice_fn=_function_name(table, SPLICE),
            json_cast=cast,
            **names,
        )
    else:
        read = _template("append_read_jsonb.sql", **names)
        write = _template("append_write_jsonb.sql", **names)
    j = sql.SQL("json" if table.keeps_text else "jsonb")
    announce = clear = ""
    if journaled:
        # The journal's trigger would otherwise diff the whole document, old and new, under the
        # row lock; this function knows exactly what it adds and says so, for this UPDATE only.
        announce = _template("append_announce.sql", appended=_literal(APPENDED), j=j, **names)
        announce += "\n"
        clear = f"  PERFORM pg_catalog.set_config({_lit(APPENDED)}, '', true);\n"
    body = _template(
        "append_image_urls.sql",
        j=j,
        url_problem_fn=_function_name(table, URL_PROBLEM),
        read=sql.SQL(read),
        write=sql.SQL(write),
        announce=sql.SQL(announce),
        clear=sql.SQL(clear),
        **_keys(shape),
    )
    return _function(
        table, APPEND, f"project {table.key_type}, scene text, urls text[]", "integer", body
    )


def _privileges(table: Table, options: Options) -> str:
    """EXECUTE for the configured roles only. REVOKE ... FROM PUBLIC is not enough on Supabase,
    whose default privileges grant every new function to its API roles, `anon` included."""
    signatures = [
        f"{_fn(table, APPEND)}({table.key_type}, text, text[])",
        f"{_fn(table, URL_PROBLEM)}(text)",
    ]
    if table.keeps_text:
        signatures.append(f"{_fn(table, SPLICE)}(text, integer, text[])")
    lines = [f"REVOKE ALL ON FUNCTION {s} FROM PUBLIC;" for s in signatures]
    granted = SUPABASE_ROLES if options.grant is None else options.grant
    # (role, statement with FN for each signature), run only where the role exists.
    conditional = [
        (r, f"REVOKE ALL ON FUNCTION FN FROM {_id(r)}") for r in API_ROLES if r not in granted
    ]
    if options.grant is None:
        conditional += [(r, f"GRANT EXECUTE ON FUNCTION FN TO {_id(r)}") for r in SUPABASE_ROLES]
    else:
        lines += [f"GRANT EXECUTE ON FUNCTION {s} TO {_roles(options.grant)};" for s in signatures]
    if conditional:
        block = ["BEGIN"]
        for role, template in conditional:
            block.append(
                f"  IF EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = {_lit(role)}) THEN"
            )
            block += [f"    EXECUTE {_lit(template.replace('FN', s))};" for s in signatures]
            block.append("  END IF;")
        block.append("END")
        lines.append(f"DO {_body(chr(10).join(block))};")
    return "\n".join(lines)


def _roles(roles: Sequence[str]) -> str:
    return ", ".join(_id(r) for r in roles)


def claims_table(schema: str) -> str:
    """The table through which runs on several hosts share out scenes (operations/claims.py):
    a claim names its run and host and expires unless the run extends it."""
    claims = sql.Identifier(schema, CLAIMS)
    return _template(
        "claims_table.sql",
        claims=claims,
        run_index=sql.Identifier(CLAIMS + "_run"),
        private=sql.SQL(_private(claims.as_string(None), rls=False)),
    )


def batches_table(schema: str) -> str:
    """The batches submitted for this database (operations/batches.py), shared by every host:
    the provider keeps a batch's output for weeks, and it must be taken in only once."""
    batches = sql.Identifier(schema, BATCHES)
    return _template(
        "batches_table.sql",
        batches=batches,
        private=sql.SQL(_private(batches.as_string(None), rls=False)),
    )


def meta_table(schema: str) -> str:
    """This database's identity (adapters/postgres/identity.py)."""
    meta = sql.Identifier(schema, META)
    return _template(
        "meta_table.sql", meta=meta, private=sql.SQL(_private(meta.as_string(None), rls=False))
    )


def ledger_table(schema: str) -> str:
    """What this database paid for, image by image (adapters/postgres/ledger_rows.py)."""
    ledger = sql.Identifier(schema, LEDGER)
    return _template(
        "ledger_table.sql",
        ledger=ledger,
        open_index=sql.Identifier(LEDGER + "_open"),
        batch_index=sql.Identifier(LEDGER + "_batch"),
        project_index=sql.Identifier(LEDGER + "_project"),
        updated_index=sql.Identifier(LEDGER + "_updated"),
        private=sql.SQL(_private(ledger.as_string(None), rls=False)),
    )


def _private(table: str, *, rls: bool = True) -> str:
    """Statements that keep `table` from PUBLIC and the Supabase API roles. With `rls`, also
    row-level security with no policy, so only the owner can use it even where a privilege
    was granted (the journal); without, the owner may grant it to imgsave's own role."""
    revoke = _template(
        "revoke_from_api_roles.sql",
        api_roles=sql.SQL("[{}]").format(sql.SQL(", ").join(map(sql.Literal, API_ROLES))),
        revoke_statement=_literal("REVOKE ALL ON " + table.replace("%", "%%") + " FROM %I"),
    )
    secure = f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY;\n" if rls else ""
    return f"REVOKE ALL ON {table} FROM PUBLIC;\n{secure}DO {_body(revoke)};"


def _journal(table: Table, shape: Shape) -> str:
    journal = _function_name(table, JOURNAL)
    doc = sql.Identifier(table.document_column)
    parse = _function_name(table, JOURNAL_PARSE)
    create = _template(
        "journal_table.sql",
        journal=journal,
        at_index=sql.Identifier(JOURNAL + "_at"),
        project_index=sql.Identifier(JOURNAL + "_project"),
        private=sql.SQL(_private(journal.as_string(None))),
    )
    scenes_fn = _function(
        table,
        JOURNAL_SCENES,
        "doc jsonb",
        "TABLE (scene text, scene_index integer, scene_id text, urls jsonb)",
        _template("journal_scenes.sql", **_keys(shape)),
        language="sql",
        volatility="IMMUTABLE",
    )
    parse_fn = _function(
        table,
        JOURNAL_PARSE,
        "value text, unwrap boolean",
        "jsonb",
        _template("journal_parse.sql"),
        volatility="IMMUTABLE",
    )
    if table.keeps_text:
        document = "{parse}({row}.{doc}::text, true)"
        changed = sql.SQL("OLD.{doc}::text IS DISTINCT FROM NEW.{doc}::text").format(doc=doc)
    else:
        # jsonb: parsed already; only a document stored as a JSON string needs parsing.
        document = (
            "CASE WHEN jsonb_typeof({row}.{doc}) = 'string' "
            "THEN {parse}({row}.{doc} #>> '{{}}', false) ELSE {row}.{doc} END"
        )
        changed = sql.SQL("OLD.{doc} IS DISTINCT FROM NEW.{doc}").format(doc=doc)
    record = _function(
        table,
        JOURNAL_RECORD,
        "",
        "trigger",
        _template(
            "journal_record.sql",
            appended=_literal(APPENDED),
            journal=journal,
            key=sql.Identifier(table.key_column),
            scenes_fn=_function_name(table, JOURNAL_SCENES),
            new_document=sql.SQL(document).format(row=sql.SQL("NEW"), doc=doc, parse=parse),
            old_document=sql.SQL(document).format(row=sql.SQL("OLD"), doc=doc, parse=parse),
            **_keys(shape),
        ),
        security="SECURITY DEFINER",
    )
    triggers = _template(
        "journal_triggers.sql",
        table=_table_name(table),
        doc=doc,
        insert_trigger=sql.Identifier(JOURNAL + "_insert"),
        update_trigger=sql.Identifier(JOURNAL + "_update"),
        record_fn=_function_name(table, JOURNAL_RECORD),
        appended=_literal(APPENDED),
        changed=changed,
    )
    revoke = "\n".join(
        f"REVOKE ALL ON FUNCTION {_fn(table, name)}({args}) FROM PUBLIC;"
        for name, args in (
            (JOURNAL_SCENES, "jsonb"),
            (JOURNAL_PARSE, "text, boolean"),
            (JOURNAL_RECORD, ""),
        )
    )
    # An internal helper whose result shape may change between versions of imgsave, which
    # CREATE OR REPLACE cannot do; nothing holds on to it between calls.
    replace_scenes = f"DROP FUNCTION IF EXISTS {_fn(table, JOURNAL_SCENES)}(jsonb);"
    return "\n\n".join([create, replace_scenes, scenes_fn, parse_fn, record, triggers, revoke])
