"""`imgsave sql`: the append function for the app's own route, held to imgsave's own save.

Every test runs the function on the real server. The property test feeds the function and the
Python save the same random documents, in all five storage forms, and demands the same document
(byte for byte where the column keeps text) or a refusal from both.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from imgsave.adapters.postgres.install import Options, Table, install, uninstall
from imgsave.core.documents import SceneRef, Shape, append_urls, decode, encode, scenes
from imgsave.core.url_rule import url_problem
from imgsave.errors import MalformedDocument

from .test_concurrency import hammer, stored
from .test_jsontext import splice

SHAPE = Shape()


def table(schema: str = "public", document_type: str = "jsonb", updated_at: bool = True) -> Table:
    return Table(
        schema=schema,
        name="projects",
        key_column="id",
        key_type="text",
        document_column="generated_output",
        document_type=document_type,
        updated_at_column="updated_at" if updated_at else None,
    )


def run(url: str, script: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn, conn.transaction():
        conn.execute(script.encode())


def imgsave_objects(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        found = conn.execute(
            "SELECT 'function ' || proname FROM pg_proc WHERE proname LIKE 'imgsave%' "
            "UNION ALL SELECT 'trigger ' || tgname FROM pg_trigger WHERE tgname LIKE 'imgsave%' "
            "UNION ALL SELECT 'relation ' || relname FROM pg_class WHERE relname LIKE 'imgsave%'"
        ).fetchall()
    return {row[0] for row in found}


# The CLI: print, apply, idempotence, uninstall.


def test_sql_prints_a_migration_that_psql_can_apply_twice_and_uninstall_removes_it_all(cli, db_url):
    printed = cli("sql", "--journal")
    assert printed.code == 0, printed.stderr
    assert printed.stdout.startswith(
        "-- imgsave: the append function, the claims and batches tables and the journal for "
        '"public"."projects" '
        '("id" text, "generated_output" jsonb).\n'
    )
    assert "SECURITY INVOKER" in printed.stdout and "SECURITY DEFINER" in printed.stdout
    before = imgsave_objects(db_url)
    run(db_url, printed.stdout)
    run(db_url, printed.stdout)  # idempotent: CREATE OR REPLACE, IF NOT EXISTS
    installed = imgsave_objects(db_url) - before
    assert installed == {
        "function imgsave_append_image_urls",
        "function imgsave_url_problem",
        "function imgsave_journal_record",
        "function imgsave_journal_scenes",
        "function imgsave_journal_parse",
        "trigger imgsave_journal_insert",
        "trigger imgsave_journal_update",
        "relation imgsave_journal",
        "relation imgsave_journal_at",
        "relation imgsave_journal_project",
        "relation imgsave_journal_pkey",
        "relation imgsave_journal_id_seq",
        "relation imgsave_claims",
        "relation imgsave_claims_pkey",
        "relation imgsave_claims_run",
        "relation imgsave_batches",
        "relation imgsave_batches_pkey",
    }
    # Without --journal, uninstall leaves the journal (and the trigger the app writes through).
    removed = cli("sql", "--uninstall", "--apply")
    assert (removed.code, removed.stdout) == (
        0,
        "sql: removed imgsave_append_image_urls() from public.projects\n",
    )
    assert imgsave_objects(db_url) - before == {o for o in installed if "journal" in o}
    assert cli("sql", "--journal", "--uninstall", "--apply").code == 0
    assert imgsave_objects(db_url) == before


def test_sql_apply_says_what_it_installed_and_to_whom(cli, db_url):
    ran = cli("sql", "--apply")
    assert (ran.code, ran.stdout, ran.stderr) == (
        0,
        "sql: installed imgsave_append_image_urls() on public.projects; EXECUTE granted to "
        "authenticated and service_role where they exist\n",
        "",
    )
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT to_regclass('imgsave_journal')").fetchone() == (None,)


def test_sql_reads_the_column_types_from_the_catalog(cli, db_url, tmp_path):
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA app; CREATE TABLE app.stories (story_id uuid PRIMARY KEY, doc text)"
        )
    (tmp_path / "app.toml").write_text(
        '[names]\ntable = "app.stories"\nkey_column = "story_id"\ndocument_column = "doc"\n'
    )
    ran = cli("sql", "--apply", "--config", str(tmp_path / "app.toml"))
    assert ran.code == 0, ran.stderr
    with psycopg.connect(db_url, autocommit=True) as conn:
        key = "6f1c3a9e-0000-4000-8000-000000000001"
        conn.execute(
            "INSERT INTO app.stories VALUES (%s, %s)", (key, '{ "scenes" : [ { "id":"a" } ] }')
        )
        assert conn.execute(
            "SELECT app.imgsave_append_image_urls(%s, 'a', ARRAY['https://img.test/1.png'])",
            (key,),
        ).fetchone() == (1,)
        assert conn.execute("SELECT doc FROM app.stories").fetchone() == (
            '{ "scenes" : [ { "id":"a","imageUrls":["https://img.test/1.png"] } ] }',
        )


def test_the_url_rule_follows_allow_http_and_help_shows_an_example_and_the_environment(
    cli, rows, db_url
):
    rows.put("p", {"scenes": [{"id": "a"}]})
    assert cli("sql", "--allow-http", "--apply").code == 0
    with psycopg.connect(db_url, autocommit=True) as conn:
        assert conn.execute(
            "SELECT imgsave_append_image_urls('p', 'a', ARRAY['http://i.test/1'])"
        ).fetchone() == (1,)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT imgsave_append_image_urls('p', 'a', ARRAY['ftp://i.test/1'])")
    for command in (["sql"], ["journal", "prune"]):
        helped = cli(*command, "--help")
        assert helped.code == 0
        assert "Example:" in helped.stdout and "IMGSAVE_DATABASE_URL" in helped.stdout, command


def test_sql_without_a_database_is_a_usage_error(cli):
    ran = cli("sql", env={"IMGSAVE_DATABASE_URL": ""})
    assert ran.code == 2
    assert "no database given" in ran.stderr


def test_a_broken_migration_is_not_half_applied(cli, db_url, tmp_path):
    (tmp_path / "bad.toml").write_text('[sql]\ngrant = ["imgsave_no_such_role"]\n')
    before = imgsave_objects(db_url)
    ran = cli("sql", "--apply", "--config", str(tmp_path / "bad.toml"))
    assert ran.code == 3
    assert ran.stderr.count("\n") == 1
    assert 'role "imgsave_no_such_role" does not exist' in ran.stderr
    assert imgsave_objects(db_url) == before


# The function's rules, one by one.


@pytest.fixture
def fn(db_url, rows):
    run(db_url, install(table(), SHAPE, Options()))

    def call(project: str, scene: str, urls: list[str], *, url: str = db_url) -> int:
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT imgsave_append_image_urls(%s, %s, %s)", (project, scene, urls)
            ).fetchone()
        return row[0]

    return call


def test_the_function_finds_scenes_by_id_then_index_then_position(fn, rows):
    rows.put(
        "p",
        '{"scenes": [{"id": "7"}, {"index": 7, "id": "b"}, {"imageUrls": null}], "keep": 6.50}',
        raw=True,
    )
    assert fn("p", "7", ["https://i.test/a"]) == 1  # the id "7" wins over index 7
    assert fn("p", "b", ["https://i.test/b"]) == 1
    assert fn("p", "3", ["https://i.test/c", "https://i.test/c"]) == 1  # position 3, once
    assert fn("p", "3", ["https://i.test/c"]) == 0  # append-if-absent
    doc = rows.doc("p")
    assert [s.get("imageUrls") for s in doc["scenes"]] == [
        ["https://i.test/a"],
        ["https://i.test/b"],
        ["https://i.test/c"],
    ]
    assert rows.text("p").count("6.50") == 1


def test_the_function_refuses_with_one_named_reason_and_writes_nothing(fn, rows):
    rows.put("p", {"scenes": [{"id": "a"}, {"id": "a"}]})
    rows.put("q", {"scenes": [{"id": "a"}]})
    before = rows.updated_at("q")
    cases = [
        ("p", "a", ["https://i.test/1"], "share"),
        ("q", "zz", ["https://i.test/1"], "has no scene 'zz'"),
        ("nope", "a", ["https://i.test/1"], "project nope not found"),
        ("q", "a", ["javascript:alert(1)"], "refusing 'javascript:alert(1)'"),
        ("q", "a", ["https://i.test/ok", "http://i.test/1"], "only https"),
        ("q", "a", ["https://i.test/" + "x" * 2100], "at most 2048"),
        ("q", "a", ["https://user:pw@i.test/1"], "credentials"),
    ]
    for project, scene, urls, reason in cases:
        with pytest.raises(psycopg.Error) as caught:
            fn(project, scene, urls)
        assert reason in str(caught.value).splitlines()[0], (project, scene, urls)
    assert rows.doc("q") == {"scenes": [{"id": "a"}]}
    assert rows.updated_at("q") == before


def test_the_function_sets_updated_at_only_when_it_appends(fn, rows):
    rows.put("p", {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1"]}]})
    before = rows.updated_at("p")
    assert fn("p", "a", ["https://i.test/1"]) == 0
    assert rows.updated_at("p") == before
    assert fn("p", "a", ["https://i.test/2"]) == 1
    assert rows.updated_at("p") > before


# The incident's route, with its save replaced by the function.


@pytest.mark.many_connections
async def test_the_route_calling_the_function_loses_nothing_at_64_callers(
    fn, db_url, rows, incident_project
):
    """The same harness that catches the naive write losing images
    (test_concurrency.test_the_naive_write_loses_images_under_the_same_harness)."""
    async with AsyncConnectionPool(
        db_url, min_size=64, max_size=64, open=False, kwargs={"autocommit": True}
    ) as pool:

        async def save(ref: SceneRef, url: str) -> None:
            async with pool.connection() as conn:
                await conn.execute(
                    "SELECT imgsave_append_image_urls(%s, %s, ARRAY[%s])",
                    (incident_project, ref.id, url),
                )

        items = await hammer(save, 500, 64)
    kept = stored(rows, incident_project)
    assert kept == Counter(url for _, url in items)  # 0 lost, 0 duplicated
    assert all(len(urls) == 25 for urls in rows.urls(incident_project).values())


# Security.


def as_role(db_url: str, name: str) -> str:
    return psycopg.conninfo.make_conninfo(db_url, user=name)


def test_execute_goes_to_the_configured_roles_only(db_url, rows, role):
    app, stranger = role(), role()
    run(db_url, install(table(), SHAPE, Options(grant=(app,))))
    rows.put("p", {"scenes": [{"id": "a"}]})
    call = "SELECT imgsave_append_image_urls('p', 'a', ARRAY['https://i.test/1'])"
    with (
        psycopg.connect(as_role(db_url, stranger), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as caught,
    ):
        conn.execute(call)
    assert "permission denied for function imgsave_append_image_urls" in str(caught.value)
    with psycopg.connect(as_role(db_url, app), autocommit=True) as conn:
        assert conn.execute(call).fetchone() == (1,)
    assert rows.urls("p") == {1: ["https://i.test/1"]}


def test_the_function_runs_with_the_callers_rights_not_its_owners(db_url, rows, role):
    """SECURITY INVOKER: a role may call it, and still cannot write a row it may not update."""
    reader = role(grant_table=False)
    run(db_url, install(table(), SHAPE, Options(grant=(reader,))))
    rows.put("p", {"scenes": [{"id": "a"}]})
    with (
        psycopg.connect(as_role(db_url, reader), autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as caught,
    ):
        conn.execute("SELECT imgsave_append_image_urls('p', 'a', ARRAY['https://i.test/1'])")
    assert "permission denied for table projects" in str(caught.value)
    assert rows.urls("p") == {1: []}


def test_by_default_execute_goes_to_supabases_roles_and_never_to_anon(db_url, rows):
    with psycopg.connect(db_url, autocommit=True) as conn:
        for name in ("anon", "authenticated", "service_role"):
            # Server-wide, and other tests may race to make them: made once, never dropped.
            conn.execute(
                "DO $$ BEGIN EXECUTE format('CREATE ROLE %I NOLOGIN', "
                f"'{name}'); EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL; "
                "END $$"
            )
        # Supabase's default privileges hand every new function to its API roles.
        conn.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT EXECUTE ON FUNCTIONS TO anon, "
            "authenticated, service_role"
        )
    run(db_url, install(table(), SHAPE, Options()))
    with psycopg.connect(db_url) as conn:
        allowed = {
            name: conn.execute(
                "SELECT has_function_privilege(%s, 'imgsave_append_image_urls(text,text,text[])', "
                "'EXECUTE')",
                (name,),
            ).fetchone()[0]
            for name in ("anon", "authenticated", "service_role", "public")
        }
        conn.execute(
            "ALTER DEFAULT PRIVILEGES IN SCHEMA public REVOKE EXECUTE ON FUNCTIONS FROM anon, "
            "authenticated, service_role"
        )
        conn.commit()
    assert allowed == {"anon": False, "authenticated": True, "service_role": True, "public": False}


def test_a_search_path_attack_changes_nothing(fn, db_url, rows):
    """A caller (or a schema it can write to) puts its own jsonb_set and jsonb_typeof, and a
    `projects` table, ahead of the real ones in its search_path."""
    rows.put("p", {"scenes": [{"id": "a"}]})
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            "CREATE SCHEMA evil; "
            "CREATE TABLE evil.projects (LIKE public.projects); "
            "CREATE FUNCTION evil.jsonb_set(jsonb, text[], jsonb, boolean DEFAULT true) "
            "RETURNS jsonb LANGUAGE sql AS $$ SELECT '{\"pwned\": true}'::jsonb $$; "
            "CREATE FUNCTION evil.jsonb_typeof(jsonb) RETURNS text LANGUAGE sql "
            "AS $$ SELECT 'object' $$; "
            "CREATE FUNCTION evil.imgsave_url_problem(text) RETURNS text LANGUAGE sql "
            "AS $$ SELECT NULL::text $$"
        )
        conn.execute("SET search_path = evil, pg_catalog, public")
        # The attack is live: an unqualified call in the caller's session reaches the shadow.
        assert conn.execute("SELECT jsonb_set('{}', '{a}', '1')").fetchone() == ({"pwned": True},)
        assert conn.execute(
            "SELECT public.imgsave_append_image_urls('p', 'a', ARRAY['https://i.test/1'])"
        ).fetchone() == (1,)
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SELECT public.imgsave_append_image_urls('p', 'a', ARRAY['javascript:x'])")
    assert rows.doc("p") == {"scenes": [{"id": "a", "imageUrls": ["https://i.test/1"]}]}


# The URL rule: the function's and imgsave's agree.

URL_PART = st.text(alphabet="aZ0-._~:/?#@!$&'()*+,;=% \"<>\\é\t", max_size=12)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(
                ["https://", "http://", "HTTPS://", "https:", "ftp://", "", "https:///"]
            ),
            st.sampled_from(["a.test", "", "u@a.test", "a.test:8080", ":80", "a.test:x", "%41"]),
            URL_PART,
        ).map("".join),
        min_size=1,
        max_size=40,
    )
)
def test_the_functions_url_rule_is_imgsaves(fn, db_url, urls_to_try):
    with psycopg.connect(db_url) as conn:
        found = conn.execute(
            "SELECT u, imgsave_url_problem(u) IS NULL FROM unnest(%s::text[]) AS u",
            (urls_to_try,),
        ).fetchall()
    for url, accepted in found:
        assert accepted == (url_problem(url) is None), url


# The function against imgsave's own save: same document, or both refuse.

FORMS = ["jsonb", "jsonb-double", "json", "text", "text-double"]
LEAVES = ["-0", "1e400", "6.50", '"caf\\u00e9"', '"a\\/b"', "1" * 30, '"é"', "true", "null", "[]"]
URLS = [
    "https://a.test/1.png",
    "https://a.test/2.png",
    "https://b.test/x?y=1#z",
    "HTTPS://C.TEST/%41",
]
BAD_URLS = ["http://a.test/1.png", "javascript:alert(1)", "https://a.test/a b", "https://u@a.test/"]

leaf = st.sampled_from(LEAVES)
junk = st.recursive(
    leaf,
    lambda inner: (
        st.lists(inner, max_size=3).map(lambda xs: ("arr", xs))
        | st.lists(st.tuples(st.sampled_from(["a", "b", "é"]), inner), max_size=3).map(
            lambda kv: ("obj", kv)
        )
    ),
    max_leaves=5,
)
FAULTS = [
    "none",
    "duplicate id",
    "index 0",
    "index 1.5",
    "index 1e0",
    "scene not an object",
    "urls not an array",
    "urls key twice",
    "scenes key twice",
    "no scenes",
]


@st.composite
def documents(draw: st.DrawFn) -> tuple[Any, list[str]]:
    """A document (as a tree `render` writes) that is mostly well-formed, with one fault in
    some; and the names its scenes go by."""
    count = draw(st.integers(0, 5))
    fault = draw(st.sampled_from(FAULTS[:1] * 12 + FAULTS[1:]))
    # Mostly names a scene has; now and then one it does not.
    names = ["x", str(count + 1)] if draw(st.integers(0, 9)) == 0 else []
    raw_scenes: list[Any] = []
    for position in range(count):
        members: list[tuple[str, Any]] = []
        if draw(st.booleans()):
            scene_id = draw(st.sampled_from([f"s{position}", f"é{position}", str(position + 7)]))
            members.append(("id", json.dumps(scene_id, ensure_ascii=draw(st.booleans()))))
            names.append(scene_id)
        # Explicit indexes never collide with another scene's position (at most 5 scenes).
        index = draw(st.sampled_from([None, position + 1, position + 11]))
        if index is not None:
            members.append(("index", str(index)))
        names.append(str(index or position + 1))
        shape = draw(st.sampled_from(["absent", "null", "empty", "some"]))
        if shape != "absent":
            urls = draw(st.lists(st.sampled_from(URLS), max_size=2, unique=True))
            items = [json.dumps(u) for u in urls] + (["1"] if draw(st.booleans()) else [])
            members.append(
                (
                    "imageUrls",
                    "null" if shape == "null" else ("arr", [] if shape == "empty" else items),
                )
            )
        members += draw(
            st.lists(st.tuples(st.sampled_from(["title", "imagePrompt", "é"]), junk), max_size=2)
        )
        raw_scenes.append(("obj", draw(st.permutations(members))))
    if raw_scenes and fault != "none":
        victim = raw_scenes[draw(st.integers(0, len(raw_scenes) - 1))][1]
        extra = {
            "duplicate id": ("id", '"s0"'),
            "index 0": ("index", "0"),
            "index 1.5": ("index", "1.5"),
            "index 1e0": ("index", "1e0"),
            "urls not an array": ("imageUrls", "5"),
            "urls key twice": ("imageUrls", ("arr", [json.dumps(URLS[0])])),
        }.get(fault)
        if extra:
            victim.append(extra)
        elif fault == "scene not an object":
            raw_scenes.append("5")
    top: list[tuple[str, Any]] = draw(
        st.lists(st.tuples(st.sampled_from(["title", "style"]), junk), max_size=2)
    )
    if fault != "no scenes":
        top.append(("scenes", ("arr", raw_scenes)))
    if fault == "scenes key twice":
        top.append(("scenes", ("arr", [])))
    return ("obj", draw(st.permutations(top))), names


style = st.sampled_from([("", ""), (" ", " "), ("\n  ", "\t")])


def render(value: Any, space: tuple[str, str]) -> str:
    if isinstance(value, str):
        return value
    kind, items = value
    a, b = space
    if kind == "arr":
        return "[" + a + ("," + b).join(render(v, space) for v in items) + a + "]"
    return (
        "{"
        + a
        + ("," + b).join(
            f"{json.dumps(k, ensure_ascii=False)}{a}:{b}{render(v, space)}" for k, v in items
        )
        + b
        + "}"
    )


def python_save(raw: str, keeps_text: bool, name: str, urls: list[str]) -> tuple[str, int] | None:
    """imgsave's own save for a scene named as the function names one; None: it refuses."""
    if any(url_problem(u) is not None for u in urls):
        return None
    try:
        document = decode(raw)
        found = scenes(document, SHAPE)
        target = next((s for s in found if s.ref.id == name), None)
        if target is None and name.isdigit():
            target = next((s for s in found if s.ref.index == int(name)), None)
        if target is None:
            return None
        edit = append_urls(document, SHAPE, [(target.ref, u) for u in urls])
        added = len(edit.appended.get(target.position, ()))
        if not edit.changed:
            return raw, 0
        if keeps_text:
            return splice(raw, edit.appended, document.double_encoded), added
        return encode(edit.document), added
    except MalformedDocument:
        return None


def meaning(text: str, double: bool) -> object:
    value = json.loads(text, parse_float=Decimal, parse_int=Decimal)
    if double:
        value = json.loads(value, parse_float=Decimal, parse_int=Decimal)
    return value


@pytest.fixture
def forms(db_url):
    """One table per storage form, each with its own copy of the function."""
    scripts = [install(table(), SHAPE, Options())]
    for schema, kind in (("as_json", "json"), ("as_text", "text")):
        scripts.append(
            f"CREATE SCHEMA {schema}; CREATE TABLE {schema}.projects (id text PRIMARY KEY, "
            f"generated_output {kind}, updated_at timestamptz);"
        )
        scripts.append(install(table(schema, kind), SHAPE, Options()))
    run(db_url, "\n".join(scripts))
    with psycopg.connect(db_url) as conn:
        yield conn


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    form=st.sampled_from(FORMS),
    drawn=documents(),
    space=style,
    pick=st.integers(0, 50),
    urls=st.one_of(
        *[st.lists(st.sampled_from(URLS), max_size=3)] * 4,
        st.lists(st.sampled_from(URLS + BAD_URLS), min_size=1, max_size=3),
    ),
)
def test_the_function_and_imgsaves_save_write_the_same_document(
    forms, form, drawn, space, pick, urls
):
    conn: psycopg.Connection = forms
    value, names = drawn
    name = names[pick % len(names)] if names else "1"
    text = render(value, space)
    kind = form.split("-")[0]
    double = form.endswith("double")
    if kind == "jsonb" and "\\ud800" in text:
        return
    schema = {"jsonb": "public", "json": "as_json", "text": "as_text"}[kind]
    stored_value = json.dumps(text, ensure_ascii=False) if double else text
    cast = {"jsonb": "::jsonb", "json": "::json", "text": ""}[kind]
    with conn.transaction(force_rollback=True):
        conn.execute(
            sql.SQL(
                "INSERT INTO {}.projects (id, generated_output) VALUES ('p', %s" + cast + ")"
            ).format(sql.Identifier(schema)),
            (stored_value,),
        )
        raw = conn.execute(
            sql.SQL("SELECT generated_output::text FROM {}.projects").format(sql.Identifier(schema))
        ).fetchone()[0]
        expected = python_save(raw, kind != "jsonb", name, urls)
        try:
            with conn.transaction():
                added = conn.execute(
                    sql.SQL("SELECT {}.imgsave_append_image_urls('p', %s, %s)").format(
                        sql.Identifier(schema)
                    ),
                    (name, urls),
                ).fetchone()[0]
        except (psycopg.errors.DataError, psycopg.errors.NoDataFound) as exc:
            assert str(exc).startswith("imgsave: "), exc  # a refusal, not a bug in the SQL
            assert expected is None, f"only the function refused: {exc}"
            return
        after = conn.execute(
            sql.SQL("SELECT generated_output::text FROM {}.projects").format(sql.Identifier(schema))
        ).fetchone()[0]
    assert expected is not None, f"only imgsave refused; the function wrote {after}"
    want, count = expected
    assert added == count
    if kind == "jsonb":
        assert meaning(after, double) == meaning(want, double)
    else:
        assert after == want


def test_uninstall_drops_exactly_the_functions_install_made():
    script = uninstall(table(), Options())
    assert "imgsave_journal" not in script
    assert "imgsave_claims" in script
    assert uninstall(table(), Options(journal=True)).count("DROP") == 11


def test_documents_are_written_back_in_the_form_they_were_found(fn, rows):
    rows.put("p", json.dumps(json.dumps({"scenes": [{"id": "a"}]})), raw=True)
    assert fn("p", "a", ["https://i.test/1"]) == 1
    assert isinstance(rows.doc("p"), str)
    assert rows.urls("p") == {1: ["https://i.test/1"]}
    assert decode(rows.text("p")).double_encoded


# Through PgBouncer in transaction mode (Supabase's port 6543).


def test_sql_apply_rpc_calls_and_audit_journal_work_through_a_transaction_pooler(
    cli, rows, pooler_url
):
    env = {"IMGSAVE_DATABASE_URL": pooler_url}
    rows.put("p", {"scenes": [{"id": "a"}, {"id": "b"}]})
    assert cli("sql", "--journal", "--apply", env=env).code == 0

    async def calls() -> None:
        async with AsyncConnectionPool(
            pooler_url,
            min_size=8,
            max_size=8,
            open=False,
            kwargs={"autocommit": True, "prepare_threshold": None},
        ) as pool:

            async def one(n: int) -> None:
                async with pool.connection() as conn:
                    await conn.execute(
                        "SELECT imgsave_append_image_urls(%s, %s, %s)",
                        ("p", "ab"[n % 2], [f"https://i.test/{n}"]),
                    )

            await asyncio.gather(*(one(n) for n in range(40)))

    asyncio.run(calls())
    assert sum(len(u) for u in rows.urls("p").values()) == 40
    audited = cli("audit", "--journal", "--json", env=env)
    assert audited.code == 0, audited.stderr
    summary = audited.json()["summary"]
    assert (summary["present"], summary["lost"], summary["journal_rows"]) == (40, 0, 40)
    assert cli("sql", "--journal", "--uninstall", "--apply", env=env).code == 0
