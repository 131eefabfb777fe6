"""The command line's own behaviour: -v, internal errors, and the layout rules the code keeps."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from imgsave._demo.incident import incident_document
from imgsave._demo.loopback import LoopbackProvider
from imgsave.engine import EXPIRING

PASSWORD = "s3cret-Passw0rd-xyz"


def test_verbose_shows_retries_and_is_silent_without_it(cli, rows):
    def run(project: str, *flags: str, env: dict[str, str] | None = None):
        rows.put(project, incident_document(1))
        with LoopbackProvider(faults=lambda n: "500" if n == 1 else "ok") as api:
            environ = {"IMGSAVE_BASE_URL": api.base_url, **(env or {})}
            return cli("generate", project, "--allow-http", "--json", *flags, env=environ)

    quiet, loud = run("p1"), run("p2", "-v")
    alias = run("p3", env={"IMGSAVE_DEBUG": "1"})
    assert quiet.code == loud.code == alias.code == 0
    retry = "imgsave: DEBUG: image API: attempt 1 failed (server error 500); retrying in"
    assert quiet.stderr == f"warning: {EXPIRING}\n", "no debug lines without -v"
    assert retry in loud.stderr and retry in alias.stderr
    assert loud.json()["saved"] == 1, "stdout stays one JSON object with -v"


def test_an_internal_error_is_one_masked_line_and_its_traceback_only_with_verbose(
    cli, db_url, monkeypatch: pytest.MonkeyPatch
):
    from psycopg.conninfo import make_conninfo

    import imgsave.prune

    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError(f"a bug that saw {PASSWORD}")

    monkeypatch.setattr(imgsave.prune, "prune", broken)
    env = {"IMGSAVE_DATABASE_URL": make_conninfo(db_url, password=PASSWORD)}
    plain = cli("prune", env=env)
    verbose = cli("prune", "-v", env=env)
    assert plain.code == verbose.code == 3
    assert plain.stderr == (
        "imgsave: error: internal error: RuntimeError: a bug that saw *** (-v shows the "
        "traceback)\n"
    )
    assert "Traceback (most recent call last)" in verbose.stderr
    assert 'raise RuntimeError(f"a bug that saw {PASSWORD}")' in verbose.stderr
    assert PASSWORD not in plain.stderr + verbose.stderr + plain.stdout + verbose.stdout


# -- layout: the rules the README's Development section promises ----------------------------

PACKAGE = Path(__file__).parents[1] / "src" / "imgsave"
COMMANDS = {"generate", "audit", "repair", "prune", "rehost", "sql"}


def _imports() -> dict[str, set[str]]:
    """Module -> the imgsave modules it imports (relative imports resolved)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        package = parts[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                base = list(package[: len(package) - node.level + 1])
                if node.module:
                    found.add(".".join([*base, *node.module.split(".")]))
                else:
                    found.update(".".join([*base, alias.name]) for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("imgsave."):
                found.add(node.module.removeprefix("imgsave."))  # type: ignore[union-attr]
        graph[module] = {m for m in found if m}
    return graph


def test_the_import_graph_has_no_cycle():
    graph = _imports()
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        visiting.append(module)
        for target in graph.get(module, ()):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in graph:
        visit(module)


def test_no_command_imports_another_and_nothing_imports_the_demo():
    graph = _imports()
    for module, targets in graph.items():
        if module in COMMANDS:
            assert not (targets & (COMMANDS - {module})), f"{module} imports {targets & COMMANDS}"
        if not module.startswith("_demo") and module != "cli":
            assert not any(t.startswith("_demo") for t in targets), f"{module} imports _demo"
    assert "_demo.demo" in graph["cli"], "the graph was read (cli runs the demo)"


def test_only_db_imports_psycopg_and_only_the_http_modules_import_httpx():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        name = str(path.relative_to(PACKAGE))
        if "import psycopg" in text or "from psycopg" in text:
            # migration.py composes the SQL it prints with psycopg.sql; it never connects.
            assert name in {"db.py", "redaction.py", "migration.py", "_demo/writes.py"}, name
        if "import httpx" in text:
            assert name in {"provider.py", "urlcheck.py", "fetch.py", "netguard.py"}, name
