"""The house's layers, as contracts: which folder may import which (docs/development.md
and and each folder's `__init__` docstring say the same in words)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "imgsave"
# Lowest first: a module imports only from its own layer or those below it.
LAYERS = ("core", "adapters", "operations", "terminal", "commands", "cli")
# Imported from anywhere: the errors every layer raises, and imgsave's own logger.
EVERYWHERE = {"errors", "logs"}


def _imports() -> dict[str, set[str]]:
    """Module (dotted, without `imgsave.`) -> the imgsave modules it imports."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        module = ".".join(p for p in parts if p != "__init__")
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{module}: imports are absolute (imgsave....)"
                name = node.module or ""
                if name == "imgsave":  # modules only (not __version__)
                    found.update(
                        a.name
                        for a in node.names
                        if (PACKAGE / f"{a.name}.py").exists() or (PACKAGE / a.name).is_dir()
                    )
                elif name.startswith("imgsave."):
                    base = name.removeprefix("imgsave.")
                    found.add(base)
                    # `from imgsave.adapters.storage import spool` imports the module spool
                    found.update(
                        f"{base}.{a.name}"
                        for a in node.names
                        if (PACKAGE / base.replace(".", "/") / f"{a.name}.py").exists()
                    )
            elif isinstance(node, ast.Import):
                found.update(
                    a.name.removeprefix("imgsave.")
                    for a in node.names
                    if a.name.startswith("imgsave.")
                )
        graph[module] = found
    return graph


GRAPH = _imports()


def _layer(module: str) -> str | None:
    head = module.split(".")[0]
    return head if head in LAYERS else None


def test_the_graph_was_read():
    assert "commands.generate" in GRAPH and "core.documents" in GRAPH["operations.execution"]
    assert "_demo.demo" in GRAPH["cli.app"], "the CLI runs the demo"


def test_the_import_graph_has_no_cycle():
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, f"import cycle: {' -> '.join([*visiting, module])}"
        visiting.append(module)
        for target in GRAPH.get(module, ()):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in GRAPH:
        visit(module)


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m)))
def test_each_module_imports_only_its_own_layer_and_those_below(module: str):
    rank = LAYERS.index(_layer(module) or "")
    for target in GRAPH[module] - EVERYWHERE:
        if module.startswith("cli") and target.startswith("_demo"):
            continue  # `imgsave demo`
        layer = _layer(target)
        assert layer is not None, f"{module} imports {target}, which belongs to no layer"
        assert LAYERS.index(layer) <= rank, f"{module} ({LAYERS[rank]}) imports {target} ({layer})"


def test_core_imports_nothing_of_ours_but_errors():
    for module, targets in GRAPH.items():
        if _layer(module) == "core":
            outside = {t for t in targets if _layer(t) != "core"} - {"errors"}
            assert not outside, f"{module} imports {outside}"


def test_an_adapter_imports_only_the_core_and_its_own_folder():
    for module, targets in GRAPH.items():
        if _layer(module) == "adapters":
            own = ".".join(module.split(".")[:2])
            outside = {
                t for t in targets - EVERYWHERE if _layer(t) != "core" and not t.startswith(own)
            }
            assert not outside, f"{module} imports {outside}"


def test_no_command_imports_another_and_nothing_imports_the_demo_but_the_cli():
    for module, targets in GRAPH.items():
        if _layer(module) == "commands":
            others = {t for t in targets if _layer(t) == "commands" and t != module}
            assert not others, f"{module} imports {others}"
        if not module.startswith(("_demo", "cli")):
            assert not any(t.startswith("_demo") for t in targets), f"{module} imports _demo"


# What a command may take from the adapters: the openers of the outside systems (the database,
# the image API, the store), the value a log query is, repair's host-wide lock, and for `sql`
# the SQL it prints. Everything else a command needs is an operation's to do.
COMMAND_ADAPTERS = {
    "adapters.postgres.database",
    "adapters.imageapi.client",
    "adapters.storage.object_store",
    "adapters.runlog.reader",
    "adapters.runlog.host_lock",
}
COMMAND_OWN_ADAPTERS = {"commands.sql": {"adapters.postgres.install"}}


@pytest.mark.parametrize("module", sorted(m for m in GRAPH if _layer(m) == "commands"))
def test_a_command_opens_the_outside_systems_and_leaves_the_rest_to_operations(module: str):
    allowed = COMMAND_ADAPTERS | COMMAND_OWN_ADAPTERS.get(module, set())
    taken = {t for t in GRAPH[module] if _layer(t) == "adapters"}
    assert taken <= allowed, f"{module} imports {sorted(taken - allowed)}"


def test_no_module_touches_another_modules_private_members():
    """`other._member` across modules (psycopg's way: a class's insides are its own)."""
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)):
                continue
            outer, inner = node.value, node.attr
            # self._x._y: reaching into what another object keeps private.
            if (
                isinstance(outer.value, ast.Name)
                and outer.value.id == "self"
                and outer.attr.startswith("_")
                and inner.startswith("_")
                and not inner.startswith("__")
            ):
                pytest.fail(f"{path.relative_to(PACKAGE)}:{node.lineno}: self.{outer.attr}.{inner}")


def test_every_folder_says_what_lives_there_and_what_it_may_import():
    for init in PACKAGE.rglob("__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text())) or ""
        assert len(doc) > 80 and "import" in doc, f"{init.relative_to(PACKAGE)}: {doc!r}"


def test_only_the_postgres_adapter_uses_psycopg_and_only_the_image_api_adapter_httpx():
    for path in PACKAGE.rglob("*.py"):
        text = path.read_text()
        name = str(path.relative_to(PACKAGE))
        if "import psycopg" in text or "from psycopg" in text:
            # redaction parses conninfo strings the way libpq does; it never connects.
            allowed = name.startswith("adapters/postgres/") or name in {
                "core/redaction.py",
                "_demo/writes.py",
            }
            assert allowed, name
        if "import httpx" in text:
            # The monitor's pings are HTTP to the operator's monitoring, not to an image API.
            assert name.startswith("adapters/imageapi/") or name == "adapters/monitor/ping.py", name
