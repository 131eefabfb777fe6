"""The command line: parse, call one library function, print, exit with the documented code.

This is the one place where errors become exit codes. Heavy modules (psycopg, httpx) are
imported inside the commands so that `imgsave --help` starts fast.
"""

from __future__ import annotations

import asyncio
import os
import sys
import traceback
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from .errors import EXIT_CANNOT_WORK, EXIT_INTERRUPTED, ImgsaveError

EXIT_CODES = (
    "Exit codes: 0 done, nothing missing; 1 finished with findings (images lost or left "
    "missing); 2 usage error (also: no database URL); 3 could not work (database or image API "
    "unreachable or refusing, project not found, malformed document); 4 another repair holds "
    "the lock; 130 interrupted."
)

app = typer.Typer(
    name="imgsave",
    help="Generate, audit and repair AI scene images in a PostgreSQL JSONB document, losing none.",
    epilog=EXIT_CODES,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        from . import __version__

        typer.echo(f"imgsave {__version__}")
        raise typer.Exit(0)


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, metavar="", help="Print the version."
        ),
    ] = False,
) -> None:
    """Generate, audit and repair AI scene images in a PostgreSQL JSONB document, losing none."""


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", metavar="FILE", help="Settings file (default: ./imgsave.toml when present)."
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", metavar="", help="Print exactly one JSON object on stdout, nothing else."
    ),
]
DatabaseUrlOption = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        envvar=["IMGSAVE_DATABASE_URL", "DATABASE_URL"],
        show_envvar=True,
        metavar="URL",
        help="PostgreSQL URL, or 'embedded' for imgsave's built-in server.",
    ),
]
AllowHttpOption = Annotated[
    bool, typer.Option("--allow-http", metavar="", help="Also accept plain http:// image URLs.")
]


@app.command(epilog=EXIT_CODES)
def generate(
    project: Annotated[
        str, typer.Argument(metavar="PROJECT", help="The project's key in the projects table.")
    ],
    images_per_scene: Annotated[
        int,
        typer.Option(
            "--images-per-scene", "-k", min=1, max=100, metavar="K", help="Images per scene."
        ),
    ] = 1,
    concurrency: Annotated[
        int,
        typer.Option(
            "--concurrency", "-c", min=1, max=1024, metavar="C", help="Provider calls at once."
        ),
    ] = 8,
    scenes: Annotated[
        str | None,
        typer.Option("--scenes", metavar="LIST", help="Only these scenes, e.g. 1,3,5-8."),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force", metavar="", help="Generate even for scenes that hold enough images."
        ),
    ] = False,
    json_output: JsonOption = False,
    allow_http: AllowHttpOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Generate images for a project's scenes and save every one of them.

    Example: imgsave generate 6f1c0f1e-... --images-per-scene 2 --concurrency 16 --json
    """

    async def work(settings: Any) -> Any:
        from . import generate as gen
        from .output import ProgressReporter

        selection = gen.parse_scene_selection(scenes) if scenes else None
        return await gen.run(
            settings,
            project,
            images_per_scene=images_per_scene,
            concurrency=concurrency,
            selection=selection,
            force=force,
            reporter=ProgressReporter(),
        )

    _execute(
        work, config=config, allow_http=allow_http, database_url=database_url, as_json=json_output
    )


ProjectsArgument = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="PROJECT", help="Only these projects (default: every project the logs name)."
    ),
]
LogOption = Annotated[
    list[str] | None,
    typer.Option(
        "--log",
        metavar="PATH",
        help="Log file, directory or glob; .gz is fine. Repeatable. "
        "Default: imgsave's own log directory.",
    ),
]
PatternOption = Annotated[
    str | None,
    typer.Option(
        "--pattern",
        metavar="REGEX",
        help="Python regex for other systems' logs. Named groups, written (?P<name>...): "
        "url and scene (required); project (else --project), ts (ISO 8601 or epoch seconds/ms), "
        "run, scene_id (optional). Lines that do not match are counted, and a pattern that "
        "matches no line is an error. The README has one example per common log shape.",
    ),
]
ProjectOption = Annotated[
    str | None,
    typer.Option("--project", metavar="ID", help="The project for lines with no project group."),
]
SinceOption = Annotated[
    str | None,
    typer.Option("--since", metavar="TIME", help="Only log lines since: ISO time or 2h, 7d."),
]
RunGapOption = Annotated[
    str,
    typer.Option(
        "--run-gap",
        metavar="DURATION",
        help="Lines without a run id farther apart start a new run.",
    ),
]
CheckUrlsOption = Annotated[
    bool,
    typer.Option(
        "--check-urls", metavar="", help="Ask each lost URL's host whether it still serves it."
    ),
]


def _log_query(
    projects: list[str] | None,
    logs: list[str] | None,
    pattern: str | None,
    project: str | None,
    since: str | None,
    run_gap: str,
    allow_http: bool,
) -> Any:
    from .logread import LogQuery, compile_pattern, parse_duration, parse_time

    if pattern:
        compile_pattern(pattern, project)
    return LogQuery(
        paths=tuple(logs or ()),
        pattern=pattern,
        project=project,
        since=parse_time(since) if since else None,
        run_gap=parse_duration(run_gap, "--run-gap"),
        allow_http=allow_http,
        only_projects=frozenset(projects or ()),
    )


@app.command(epilog=EXIT_CODES)
def audit(
    projects: ProjectsArgument = None,
    log: LogOption = None,
    pattern: PatternOption = None,
    project: ProjectOption = None,
    since: SinceOption = None,
    run_gap: RunGapOption = "30m",
    check_urls: CheckUrlsOption = False,
    json_output: JsonOption = False,
    allow_http: AllowHttpOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Find the images that were generated but are not in their scene.

    Example: imgsave audit --log /var/log/app/ --since 2d --pattern REGEX --json

    (REGEX for the incident's console log, and for other log shapes: see the README.)
    """

    async def work(settings: Any) -> Any:
        from .audit import run_audit

        query = _log_query(projects, log, pattern, project, since, run_gap, settings.allow_http)
        return await run_audit(settings, query, check_urls=check_urls)

    _execute(
        work, config=config, allow_http=allow_http, database_url=database_url, as_json=json_output
    )


@app.command(epilog=EXIT_CODES)
def repair(
    projects: ProjectsArgument = None,
    log: LogOption = None,
    pattern: PatternOption = None,
    project: ProjectOption = None,
    since: SinceOption = None,
    run_gap: RunGapOption = "30m",
    check_urls: CheckUrlsOption = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", metavar="", help="Only show the plan (the default).")
    ] = False,
    execute: Annotated[
        bool, typer.Option("--execute", metavar="", help="Restore the lost images.")
    ] = False,
    regenerate: Annotated[
        bool,
        typer.Option(
            "--regenerate",
            metavar="",
            help="Generate new images for scenes left short "
            "(expired URLs, never-logged empty scenes).",
        ),
    ] = False,
    concurrency: Annotated[
        int,
        typer.Option("--concurrency", "-c", min=1, max=1024, metavar="C", help="For --regenerate."),
    ] = 8,
    quiet: Annotated[
        bool,
        typer.Option("--quiet", "-q", metavar="", help="Print nothing unless something is wrong."),
    ] = False,
    json_output: JsonOption = False,
    allow_http: AllowHttpOption = False,
    database_url: DatabaseUrlOption = None,
    config: ConfigOption = None,
) -> None:
    """Put lost images back (with --execute); never restores stale or orphaned URLs.

    Example: imgsave repair --execute --check-urls --json   (from cron: see the README)
    """

    async def work(settings: Any) -> Any:
        from .errors import UsageError
        from .output import ProgressReporter
        from .repair import run_repair

        if dry_run and execute:
            raise UsageError("--dry-run and --execute exclude each other")
        query = _log_query(projects, log, pattern, project, since, run_gap, settings.allow_http)
        return await run_repair(
            settings,
            query,
            execute=execute,
            regenerate=regenerate,
            check_urls=check_urls,
            concurrency=concurrency,
            reporter=ProgressReporter(quiet=quiet),
        )

    _execute(
        work,
        config=config,
        allow_http=allow_http,
        database_url=database_url,
        as_json=json_output,
        quiet=quiet,
    )


@app.command(epilog=EXIT_CODES)
def prune(
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove run logs last written before this: 30d, 12w.",
        ),
    ] = "30d",
    execute: Annotated[
        bool, typer.Option("--execute", metavar="", help="Remove them (default: only list).")
    ] = False,
    json_output: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """Remove imgsave's own generation logs older than a window (a retention rule for cron).

    Example: imgsave prune --older-than 30d --execute
    """

    async def work(settings: Any) -> Any:
        from .logread import parse_duration
        from .prune import prune as run_prune

        window = parse_duration(older_than, "--older-than")
        return run_prune(settings.resolved_log_dir(), window, label=older_than, execute=execute)

    _execute(work, config=config, as_json=json_output)


@app.command(epilog=EXIT_CODES)
def demo(
    config: ConfigOption = None,
) -> None:
    """Tell the incident's story on the embedded database: no keys, no set-up."""

    async def work(settings: Any) -> Any:
        from .demo import run_demo

        return await run_demo(settings)

    _execute(work, config=config, as_json=False)


class _Result(Protocol):
    """What every command's library function returns."""

    @property
    def exit_code(self) -> int: ...

    def to_json(self) -> dict[str, Any]: ...

    def stderr_lines(self) -> list[str]:
        """What must reach stderr whatever the output mode: why a run stopped, and paid
        images that only this printout records."""
        ...


def _execute(
    work: Callable[[Any], Coroutine[Any, Any, _Result]],
    *,
    config: Path | None,
    as_json: bool,
    allow_http: bool = False,
    database_url: str | None = None,
    quiet: bool = False,
) -> None:
    from .config import load_settings
    from .output import error, print_json, render, warn
    from .redaction import redact, weak_secret_warnings

    secrets: tuple[str, ...] = ()
    try:
        flags = {"allow_http": allow_http or None, "database_url": database_url}
        settings = load_settings(flags, config_path=config)
        secrets = settings.secrets
        for message in weak_secret_warnings(settings.api_key, settings.database_url):
            warn(message)
        result = asyncio.run(work(settings))
    except ImgsaveError as exc:
        _fail(str(exc), exc.exit_code, secrets, as_json)
    except KeyboardInterrupt:
        _fail("interrupted", EXIT_INTERRUPTED, secrets, as_json)
    except Exception as exc:  # a bug: say so in one line, never with a secret in it
        if os.environ.get("IMGSAVE_DEBUG"):
            sys.stderr.write(redact(traceback.format_exc(), secrets))
        _fail(
            f"internal error: {type(exc).__name__}: {exc} (IMGSAVE_DEBUG=1 shows the traceback)",
            EXIT_CANNOT_WORK,
            secrets,
            as_json,
        )
    for line in result.stderr_lines():
        error(redact(line, secrets))
    if as_json:
        print_json(result.to_json())
    elif not (quiet and result.exit_code == 0):
        render(result)
    raise typer.Exit(result.exit_code)


def _fail(message: str, code: int, secrets: tuple[str, ...], as_json: bool) -> None:
    from .output import error, print_json
    from .redaction import redact

    message = redact(" ".join(message.split()), secrets)
    error(message)
    if as_json:
        print_json({"error": message, "exit_code": code})
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
