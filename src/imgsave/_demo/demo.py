"""`imgsave demo`: the incident and its cure, on the embedded database, with no keys.

Two copies of a 20-scene project. On the first, the web route's fetch-modify-write saves every
image concurrently and loses some while logging "Saved" for all; audit finds exactly those from
the route's console log and repair puts them back. On the second, imgsave generates the same
number of images and every one is in the document afterwards.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.table import Table

from imgsave._demo.incident import APP_LOG_PATTERN, incident_document, naive_generate
from imgsave._demo.loopback import LoopbackProvider
from imgsave._demo.writes import DemoDatabase
from imgsave.adapters.imageapi.client import Provider
from imgsave.adapters.postgres import embedded
from imgsave.adapters.runlog.reader import LogQuery
from imgsave.adapters.runlog.writer import new_run_id
from imgsave.commands import generate
from imgsave.commands.audit import run_audit
from imgsave.commands.generate import Wanted
from imgsave.commands.repair import run_repair
from imgsave.core.documents import decode, encode, scenes
from imgsave.core.image_bytes import key_segment
from imgsave.core.result_json import fields_json
from imgsave.core.settings import Settings
from imgsave.errors import EXIT_FINDINGS, EXIT_OK
from imgsave.operations.planning import Ask
from imgsave.operations.stop import StopSignal, sigint_stops
from imgsave.terminal.consoles import stdout_console
from imgsave.terminal.generate_view import GenerateResult

SCENES = 20
IMAGES_PER_SCENE = 2
# Where a CDN in front of the demo's store folder would serve it; nothing is fetched from it.
DEMO_CDN = "https://images.demo.imgsave.test"


@dataclass
class RouteCounts:
    logged_saved: int
    in_database: int
    after_repair: int


@dataclass
class ImgsaveCounts:
    requested: int
    saved: int


@dataclass
class DemoResult:
    naive: RouteCounts
    imgsave: ImgsaveCounts
    log_dir: str

    @property
    def exit_code(self) -> int:
        whole = self.imgsave.saved == self.imgsave.requested
        repaired = self.naive.after_repair == self.naive.logged_saved
        return EXIT_OK if whole and repaired else EXIT_FINDINGS

    def stderr_lines(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, object]:
        return fields_json(self)

    def render(self, console: Console) -> None:
        verdict = "every image saved" if self.exit_code == 0 else "images missing"
        console.print(
            f"demo: the route kept {self.naive.in_database} of {self.naive.logged_saved} images "
            f"it logged as saved, {self.naive.after_repair} after repair; imgsave saved "
            f"{self.imgsave.saved} of {self.imgsave.requested} ({verdict})."
        )


def _counts(db_text: str | None, settings: Settings) -> dict[int, int]:
    document = decode(db_text)
    return {s.ref.index: len(s.urls) for s in scenes(document, settings.shape)}


async def run_demo(
    settings: Settings, *, data_dir: Path | None = None, quiet: bool = False
) -> DemoResult:
    # -q: the story is not told; the result's summary line is the CLI's to print, or not.
    out = Console(quiet=True) if quiet else stdout_console()
    # The demo always runs on the embedded database and its own log folder: it must never
    # create demo projects in a real database, nor demo entries in the logs cron repairs from.
    settings = replace(settings, database_url=None)
    # Beside the log folder, not in it: `audit --log LOGDIR` reads every file under it, and
    # the demo's console log and orphaned projects would be in every real audit.
    real = settings.resolved_log_dir()
    log_dir = real.with_name(real.name + "-demo")
    app_log = log_dir / "route-console.log"
    store_dir = log_dir / "store"
    out.print("[bold]imgsave demo[/]: the lost-images incident, replayed")
    out.print("Starting the embedded PostgreSQL (first start takes a few seconds)…")
    url = embedded.start(data_dir)
    stamp = new_run_id()
    naive_project, safe_project = f"demo-{stamp}-route", f"demo-{stamp}-imgsave"
    document = encode(decode(json.dumps(incident_document(SCENES))))
    total = SCENES * IMAGES_PER_SCENE
    async with await DemoDatabase.open(
        url, settings.names, settings.database, max_size=8, create_table=True
    ) as db:
        await db.put(naive_project, document)
        await db.put(safe_project, document)
        with LoopbackProvider(latency=0.05, jitter=0.1) as api:
            async with Provider(api.base_url, None, None, settings.provider) as provider:
                out.print(
                    f"Two copies of a {SCENES}-scene project; an OpenAI-compatible image API on "
                    f"{api.base_url} answers in 50–150 ms.\n"
                )
                out.print(
                    f"[bold]1. The web route[/]: {total} images at once, each saved by "
                    "fetch → modify → write of the whole document."
                )
                log_dir.mkdir(parents=True, exist_ok=True)
                with app_log.open("w") as console_log:
                    logged = await naive_generate(
                        db,
                        provider,
                        naive_project,
                        settings.shape,
                        IMAGES_PER_SCENE,
                        app_log=console_log,
                        think=0.01,
                    )
                naive = _counts(await db.read(naive_project), settings)
                kept = sum(naive.values())
                out.print(
                    f'   The route logged [bold]{len(logged)}[/] × "Saved image to database"; '
                    f"the document holds [bold red]{kept}[/]. "
                    f"[bold red]{len(logged) - kept} images lost[/], silently.\n"
                )
                out.print(
                    f"[bold]2. imgsave generate[/]: the same {total} images from an API that "
                    "answers in base64, as OpenAI's GPT image models do. Each image is put in "
                    "your store, and its permanent URL saved under SELECT … FOR UPDATE."
                )
        store_settings = replace(
            settings,
            store=replace(settings.store, url=store_dir.as_uri(), public_url=DEMO_CDN),
        )
        with LoopbackProvider(latency=0.05, jitter=0.1, answer="b64", image_bytes=50_000) as api:
            # The command's own run, on the embedded database: the demo shows what users get.
            run_settings = replace(
                store_settings, database_url=url, base_url=api.base_url, log_dir=log_dir,
                allow_http=True,
            )  # fmt: skip
            with sigint_stops(StopSignal()):
                result = await generate.run(
                    run_settings, Wanted(safe_project, Ask(IMAGES_PER_SCENE)), concurrency=8
                )
        assert isinstance(result, GenerateResult)
        safe = _counts(await db.read(safe_project), settings)
        # This demo's images: every demo keeps its projects, and the store folder is shared.
        stored = sorted((store_dir / key_segment(safe_project)).rglob("*.png"))
        example = scenes(decode(await db.read(safe_project)), settings.shape)[0].urls[0]
        out.print(
            f"   {result.saved} of {result.requested} saved in "
            f"{result.tally.transactions} transactions; "
            f"the document holds [bold green]{sum(safe.values())}[/], and the store "
            f"{len(stored)} images ({store_dir}).\n   Saved URLs are permanent, e.g. {example}\n"
            f"   (served from that folder by whatever serves {DEMO_CDN}).\n"
        )
        out.print(
            f"[bold]3. imgsave audit[/] reads the route's console log ({app_log.name}) with "
            "--pattern and diffs it against the document."
        )
        repair_settings = replace(settings, database_url=url, log_dir=log_dir)
        query = LogQuery(
            paths=(str(app_log),), pattern=APP_LOG_PATTERN, only_projects=frozenset({naive_project})
        )
        report = (await run_audit(repair_settings, query, check_urls=False)).report
        out.print(
            f"   {len(report.lost)} lost, {report.present} present, {len(report.stale)} stale: "
            "exactly the images the route dropped.\n"
        )
        out.print("[bold]4. imgsave repair --execute[/] appends them under the same lock.")
        repaired_run = await run_repair(repair_settings, query, execute=True)
        after = (await run_audit(repair_settings, query, check_urls=False)).report
        repaired = _counts(await db.read(naive_project), settings)
        out.print(
            f"   {repaired_run.repaired} restored; a second audit finds "
            f"[bold green]{len(after.lost)} lost[/].\n"
        )
    table = Table(title="Images per scene in the database", title_justify="left")
    table.add_column("scene", justify="right")
    table.add_column("web route", justify="right")
    table.add_column("after repair", justify="right")
    table.add_column("imgsave", justify="right")
    for index in sorted(safe):
        have = naive.get(index, 0)
        style = "red" if have < IMAGES_PER_SCENE else ""
        table.add_row(
            str(index),
            f"[{style}]{have}[/]" if style else str(have),
            str(repaired.get(index, 0)),
            str(safe[index]),
        )
    out.print(table)
    out.print(
        f"Projects [cyan]{naive_project}[/] and [cyan]{safe_project}[/] stay in the embedded "
        f"database; imgsave's generation log is in {log_dir}."
    )
    return DemoResult(
        naive=RouteCounts(
            logged_saved=len(logged), in_database=kept, after_repair=sum(repaired.values())
        ),
        imgsave=ImgsaveCounts(requested=result.requested, saved=sum(safe.values())),
        log_dir=str(log_dir),
    )
