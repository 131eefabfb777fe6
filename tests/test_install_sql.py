"""The SQL `imgsave sql` installs, held to golden files: any change to what users apply to
their database shows up as a diff of .sql text in review. (The behaviour of that SQL is tested
against PostgreSQL in test_route_sql.py and test_journal.py.)

To accept a deliberate change: IMGSAVE_UPDATE_GOLDEN=1 pytest tests/test_install_sql.py, then
read the diff of tests/golden/ before committing it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from imgsave.adapters.postgres.install import Options, install, uninstall
from imgsave.core.documents import Shape

from .test_route_sql import table

GOLDEN = Path(__file__).parent / "golden"
VARIANTS = {
    "install_jsonb_journal.sql": lambda: install(table(), Shape(), Options(journal=True)),
    "install_text.sql": lambda: install(
        table(document_type="text"), Shape(), Options(journal=True, grant=("app",), allow_http=True)
    ),
    "install_json_no_updated_at.sql": lambda: install(
        table(document_type="json", updated_at=False), Shape(), Options()
    ),
    "uninstall_journal.sql": lambda: uninstall(table(), Options(journal=True)),
}


def _matches(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("IMGSAVE_UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text(), f"{name} changed: IMGSAVE_UPDATE_GOLDEN=1 accepts it"


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_installed_sql_is_the_golden_file(name: str):
    _matches(name, VARIANTS[name]())


def test_the_default_imgsave_sql_output_is_the_golden_file(cli):
    ran = cli("sql", "--journal")
    assert ran.code == 0, ran.stderr
    _matches("install_jsonb_journal.sql", ran.stdout)
