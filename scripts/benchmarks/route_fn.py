"""The SQL function on one hot row (64 clients, one image per call), against pgbench's
`SELECT … FOR UPDATE` + `UPDATE` script in the same run; then the journal trigger's cost."""

from __future__ import annotations

import psycopg

from imgsave.adapters.postgres.install import Options, Table, install, uninstall
from imgsave.core.documents import Shape

from .common import URL, Result
from .hot_row import pgbench_rate

CLIENTS = 64
IMAGES = 6400
TABLE = Table(
    schema="public",
    name="projects",
    key_column="id",
    key_type="text",
    document_column="generated_output",
    document_type="jsonb",
    updated_at_column="updated_at",
)


def _apply(script: str) -> None:
    with psycopg.connect(URL, autocommit=True) as conn, conn.transaction():
        conn.execute(script.encode())


def run() -> list[Result]:
    _apply(install(TABLE, Shape(), Options()))
    baseline = pgbench_rate(CLIENTS, IMAGES)
    function = pgbench_rate(CLIENTS, IMAGES, "route_fn.sql")
    _apply(install(TABLE, Shape(), Options(journal=True)))
    journaled = pgbench_rate(CLIENTS, IMAGES, "route_fn.sql")
    _apply(uninstall(TABLE, Options(journal=True)))
    return [
        Result(
            benchmark=f"the app's route calling imgsave_append_image_urls, {CLIENTS} clients, "
            "one hot row",
            imgsave=f"{function:,.0f} images/s",
            baseline=f"pgbench `SELECT … FOR UPDATE` + `UPDATE`: {baseline:,.0f} images/s",
            ratio=function / baseline,
            goal="≥ 1.0",
            measured={"function_per_s": function, "baseline_per_s": baseline},
        ),
        Result(
            benchmark="the same calls with the journal trigger installed",
            imgsave=f"{journaled:,.0f} images/s",
            baseline=f"without the journal: {function:,.0f} images/s",
            ratio=journaled / function,
            goal="≥ 0.8 (≤ 20% slower)",
            measured={"journal_per_s": journaled, "function_per_s": function},
        ),
    ]
