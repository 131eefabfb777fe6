"""The command line: parse, call one library function, print, exit with the documented code.

Each command parses its own options (the shared ones come from options.py), calls one library
function and hands its result to `_execute`, the one place where errors become exit codes.
Heavy modules (psycopg, httpx) are imported inside the commands so that `imgsave --help`
starts fast.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, NoReturn, Protocol

import typer

from imgsave.cli.command_classes import MAX_HELP_WIDTH, ImgsaveGroup
from imgsave.cli.options import (
    Common,
    ConcurrencyOption,
    DryRunOption,
    LogSources,
    MaxCostOption,
    MaxImagesOption,
    log_source_options,
    shared_options,
)
from imgsave.errors import EXIT_CANNOT_WORK, EXIT_INTERRUPTED, ImgsaveError, UsageError

if TYPE_CHECKING:
    from rich.console import Console

    from imgsave.cli.watch import RunWatch
    from imgsave.core.kind_facts import KindFacts
    from imgsave.core.settings import Settings
    from imgsave.terminal.generate_view import PlanOutput

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
    cls=ImgsaveGroup,
    context_settings={"max_content_width": MAX_HELP_WIDTH},
    pretty_exceptions_enable=False,
    # Plain help, as click writes it: no type placeholders such as <bool> beside flags.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        from imgsave import __version__

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


@app.command(epilog=EXIT_CODES)
@shared_options("store", "quiet", "json_output", "allow_http", "database_url", "config", "verbose")
def generate(
    ctx: typer.Context,
    common: Common,
    projects: Annotated[
        list[str] | None,
        typer.Argument(
            metavar="PROJECT",
            show_default=False,
            help="The projects' keys in the projects table.",
        ),
    ] = None,
    all_projects: Annotated[
        bool,
        typer.Option("--all", metavar="", help="Every project with a scene short of K images."),
    ] = False,
    images_per_scene: Annotated[
        int,
        typer.Option(
            "--images-per-scene", "-k", min=1, max=100, metavar="K", help="Images per scene."
        ),
    ] = 1,
    concurrency: ConcurrencyOption = 8,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            metavar="N/min",
            show_default=False,
            help="Requests started per minute, across all projects, evenly spaced; slows "
            "down by itself on 429s. Also [provider] rate.",
        ),
    ] = None,
    max_images: MaxImagesOption = None,
    max_cost: MaxCostOption = None,
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            metavar="",
            help="Print the plan (per project: the scenes short and the images it would buy; "
            "the mode; the estimated cost) and buy, claim and write nothing.",
        ),
    ] = False,
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
    batch: Annotated[
        bool,
        typer.Option(
            "--batch",
            metavar="",
            help="Through the provider's Batch API, half price: collect every finished batch, "
            "then submit what is still missing. Also [provider] batch = true.",
        ),
    ] = False,
    batch_size: Annotated[
        int,
        typer.Option(
            "--batch-size", min=1, max=50_000, metavar="N", help="Images per batch (--batch)."
        ),
    ] = 500,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait", metavar="", help="With --batch: stay until what was submitted is collected."
        ),
    ] = False,
    strict: Annotated[
        bool,
        typer.Option(
            "--strict",
            metavar="",
            help="Exit 1 when a scene has no prompt (by default they are reported, exit 0).",
        ),
    ] = False,
) -> None:
    """Generate images for projects' scenes and save every one of them.

    With several projects or --all, one concurrency bound and one pace hold across all of
    them, and runs on other hosts never generate the scenes this one has claimed.

    \b
    Example:
      imgsave generate 6f1c0f1e-... --images-per-scene 2 --concurrency 16 --json
      imgsave generate --all -k 2 --concurrency 32 --rate 600/min --max-images 5000
      imgsave generate --all -k 2 --batch --json
      imgsave generate --all -k 2 --max-cost 25 --dry-run
    """

    given = _given(ctx)
    output: PlanOutput | None = None
    if dry_run:
        from imgsave.terminal.generate_view import PlanOutput

        output = PlanOutput(as_json=common.as_json, quiet=common.quiet)

    async def work(settings: Settings) -> _Result:
        from imgsave.adapters.imageapi.pace import parse_rate
        from imgsave.cli.parsers import parse_scene_selection
        from imgsave.commands import generate as gen
        from imgsave.core.cost import Limits, parse_amount
        from imgsave.operations.planning import Ask
        from imgsave.terminal.progress import ProgressReporter

        selection = parse_scene_selection(scenes) if scenes else None
        budget = parse_amount(max_cost) if max_cost is not None else None
        in_batch = batch or settings.provider.batch
        if in_batch:
            # Refused, never silently dropped: a batch has no pace and no concurrency.
            for name, flag in (("rate", "--rate"), ("concurrency", "--concurrency")):
                if name in given:
                    raise UsageError(f"{flag} does not apply to --batch (the provider paces it)")
        elif wait:
            raise UsageError("--wait goes with --batch")
        if rate is not None:
            parse_rate(rate)
        wanted = gen.Wanted(
            projects or [],
            Ask(images_per_scene, selection, force),
            all_projects=all_projects,
            limits=Limits(max_images, budget),
        )
        if output is not None:
            return await gen.run_dry(settings, wanted, batch=in_batch, output=output)
        if in_batch:
            return await gen.run_batch(
                settings,
                wanted,
                batch_size=batch_size,
                strict=strict,
                wait=wait,
                reporter=ProgressReporter(quiet=common.quiet),
            )
        if rate is not None:
            settings = replace(settings, provider=replace(settings.provider, rate=rate))
        return await gen.run(
            settings,
            wanted,
            concurrency=concurrency,
            strict=strict,
            quiet=common.quiet,
            reporter=ProgressReporter(quiet=common.quiet),
        )

    # A dry run is no run to report: it pings no check and writes no metrics (a cron
    # monitor must not see a plan as the run it watches).
    _execute(work, common, watched=output is None, stream=output)


def _given(ctx: typer.Context) -> set[str]:
    """The options given on the command line (not left to their defaults)."""
    sources = {name: ctx.get_parameter_source(name) for name in ctx.params}
    return {name for name, source in sources.items() if source and source.name != "DEFAULT"}


@app.command(epilog=EXIT_CODES)
@shared_options("store", "quiet", "json_output", "allow_http", "database_url", "config", "verbose")
@log_source_options
def audit(
    common: Common,
    sources: LogSources,
) -> None:
    """Find the images that were generated but are not in their scene.

    \b
    Example:
      imgsave audit --json
      imgsave audit --log /var/log/app/ --since 2d --pattern '^(?P<ts>\\S+) \\[(?P<project>[^\\]]+)\\] \\[Scene (?P<scene>\\d+)\\] Saved image to database: (?P<url>\\S+)'
      imgsave audit --log app.jsonl --pattern '"time":"(?P<ts>[^"]+)".*"projectId":"(?P<project>[^"]+)".*"sceneIndex":(?P<scene>\\d+).*"imageUrl":"(?P<url>[^"]+)"'

    \b
    The first pattern reads a console log of lines such as
      2026-11-25T10:00:00Z [6f1c…] [Scene 3] Saved image to database: URL
    the second JSON lines such as
      {"time":…,"projectId":…,"sceneIndex":3,"imageUrl":…}
    """  # noqa: E501 (examples are whole command lines)

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.audit import run_audit

        query = sources.query(settings.allow_http)
        return await run_audit(settings, query, check_urls=sources.check_urls)

    _execute(work, common)


@app.command(epilog=EXIT_CODES)
@shared_options("store", "quiet", "json_output", "allow_http", "database_url", "config", "verbose")
@log_source_options
def repair(
    common: Common,
    sources: LogSources,
    dry_run: DryRunOption = False,
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
    concurrency: ConcurrencyOption = 8,
    max_images: MaxImagesOption = None,
    max_cost: MaxCostOption = None,
) -> None:
    """Put lost images back (with --execute); never restores stale or orphaned URLs.

    \b
    Example (from cron, every ten minutes; the exit code to an alert):
      imgsave repair --execute --check-urls --json
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.repair import run_repair
        from imgsave.core.cost import Limits, parse_amount
        from imgsave.terminal.progress import ProgressReporter

        _one_mode(dry_run=dry_run, execute=execute)
        return await run_repair(
            settings,
            sources.query(settings.allow_http),
            execute=execute,
            regenerate=regenerate,
            check_urls=sources.check_urls,
            concurrency=concurrency,
            limits=Limits(max_images, parse_amount(max_cost) if max_cost is not None else None),
            reporter=ProgressReporter(quiet=common.quiet),
        )

    _execute(work, common)


@app.command(epilog=EXIT_CODES)
@shared_options("store", "quiet", "json_output", "allow_http", "database_url", "config", "verbose")
def rehost(
    common: Common,
    projects: Annotated[
        list[str] | None,
        typer.Argument(metavar="PROJECT", show_default=False, help="The projects to rehost."),
    ] = None,
    all_projects: Annotated[
        bool, typer.Option("--all", metavar="", help="Every project in the table.")
    ] = False,
    dry_run: DryRunOption = False,
    execute: Annotated[
        bool, typer.Option("--execute", metavar="", help="Copy and replace the links.")
    ] = False,
    regenerate: Annotated[
        bool,
        typer.Option(
            "--regenerate", metavar="", help="New images for links that no longer resolve."
        ),
    ] = False,
    concurrency: ConcurrencyOption = 8,
    max_images: MaxImagesOption = None,
    max_cost: MaxCostOption = None,
) -> None:
    """Copy images behind a provider's expiring links into your store and replace each link in
    place; links that no longer resolve are reported expired.

    \b
    Example:
      imgsave rehost --all --execute --json
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.rehost import run_rehost
        from imgsave.core.cost import Limits, parse_amount
        from imgsave.terminal.progress import ProgressReporter

        _one_mode(dry_run=dry_run, execute=execute)
        return await run_rehost(
            settings,
            list(projects or ()),
            all_projects=all_projects,
            execute=execute,
            regenerate=regenerate,
            concurrency=concurrency,
            limits=Limits(max_images, parse_amount(max_cost) if max_cost is not None else None),
            reporter=ProgressReporter(quiet=common.quiet),
        )

    _execute(work, common)


@app.command(epilog=EXIT_CODES)
@shared_options("quiet", "json_output", "database_url", "config", "verbose")
def prune(
    common: Common,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove what was last written before this: 30d, 12w.",
        ),
    ] = "30d",
    execute: Annotated[
        bool, typer.Option("--execute", metavar="", help="Remove them (default: only list).")
    ] = False,
) -> None:
    """Remove the ledger's rows that reached their end and imgsave's own run logs, older than a
    window (a retention rule for cron). A purchase still on its way is never removed.

    \b
    Example:
      imgsave prune --older-than 30d --execute
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.cli.parsers import parse_duration
        from imgsave.commands.prune import run_prune

        window = parse_duration(older_than, "--older-than")
        return await run_prune(settings, window, label=older_than, execute=execute)

    _execute(work, common)


@app.command(name="sql", epilog=EXIT_CODES)
@shared_options("quiet", "allow_http_sql", "database_url", "config", "verbose")
def sql_command(
    common: Common,
    journal: Annotated[
        bool,
        typer.Option(
            "--journal",
            metavar="",
            help="Also the journal: a table and a trigger that record every URL added to or "
            "removed from a scene, by any writer (read by audit --journal).",
        ),
    ] = False,
    apply: Annotated[
        bool,
        typer.Option("--apply", metavar="", help="Run it, in one transaction (default: print it)."),
    ] = False,
    remove: Annotated[
        bool,
        typer.Option(
            "--uninstall",
            metavar="",
            help="The SQL that removes it instead (the journal's table only with --journal; "
            "the ledger only while it holds no purchase on its way).",
        ),
    ] = False,
    new_identity: Annotated[
        bool,
        typer.Option(
            "--new-identity",
            metavar="",
            help="Instead: give this database an identity of its own. Run it on a copy "
            "restored from another database's snapshot, before anything else: a copy carries "
            "its original's identity, and would collect its batches and jobs.",
        ),
    ] = False,
) -> None:
    """Print (or apply) SQL that fixes the app's own route: a function that appends image URLs
    under a row lock, to call instead of a fetch-modify-write, and optionally a journal.

    The function is imgsave_append_image_urls(project, scene, urls), scene being an id or an
    index; it returns how many URLs it appended. Column types are read from the database.
    EXECUTE goes to [sql] grant in imgsave.toml (default: authenticated and service_role
    where they exist, as on Supabase), never to PUBLIC.

    \b
    Example:
      imgsave sql --journal > supabase/migrations/20261126_imgsave.sql
      imgsave sql --journal --apply
      imgsave sql --new-identity --apply      # on a database restored from a snapshot
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.sql import run_new_identity, run_sql

        if new_identity:
            if remove or journal:
                raise UsageError("--new-identity goes alone (not with --uninstall or --journal)")
            return await run_new_identity(settings, apply=apply)
        return await run_sql(settings, journal=journal, apply=apply, remove=remove)

    _execute(work, common)


journal_app = typer.Typer(
    help="The database's journal of image URLs (imgsave sql --journal).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(journal_app, name="journal")


@journal_app.command(name="prune", epilog=EXIT_CODES)
@shared_options("quiet", "json_output", "database_url", "config", "verbose")
def journal_prune(
    common: Common,
    older_than: Annotated[
        str,
        typer.Option(
            "--older-than",
            metavar="DURATION",
            help="Remove journal rows written before this: 30d, 12w. Losses older than this "
            "can no longer be found from the journal.",
        ),
    ] = "30d",
    execute: Annotated[
        bool, typer.Option("--execute", metavar="", help="Remove them (default: only count).")
    ] = False,
) -> None:
    """Keep the journal small: remove rows older than a window (a retention rule for cron).

    \b
    Example:
      imgsave journal prune --older-than 30d --execute
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.cli.parsers import parse_duration
        from imgsave.commands.sql import run_journal_prune

        window = parse_duration(older_than, "--older-than")
        return await run_journal_prune(settings, window, label=older_than, execute=execute)

    _execute(work, common)


ledger_app = typer.Typer(
    help="What this database paid for, image by image (the ledger).",
    no_args_is_help=True,
    rich_markup_mode=None,
)
app.add_typer(ledger_app, name="ledger")


@ledger_app.command(name="import", epilog=EXIT_CODES)
@shared_options("quiet", "json_output", "database_url", "config", "verbose")
def ledger_import(
    common: Common,
    logs: Annotated[
        list[str] | None,
        typer.Option(
            "--log",
            metavar="PATH",
            show_default=False,
            help="More of imgsave's own logs (files, folders, globs) beside this host's.",
        ),
    ] = None,
) -> None:
    """Take the history of runs from before the ledger into it, once: images never saved, jobs
    pending, batches not collected, spooled images. Run it against the database those logs are
    for; running it again takes nothing twice.

    \b
    Example:
      imgsave ledger import --json
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.ledger import run_import

        return await run_import(settings, logs or [])

    _execute(work, common)


batches_app = typer.Typer(
    help="This database's batches at the image API (generate --batch).",
    invoke_without_command=True,
    rich_markup_mode=None,
)
app.add_typer(batches_app, name="batches")


@batches_app.callback(epilog=EXIT_CODES)
@shared_options("quiet", "json_output", "database_url", "config", "verbose")
def batches(common: Common, ctx: typer.Context) -> None:
    """List this database's batches, from any host: status, counts, whether a run collected
    them. Exit 1 while a finished batch is uncollected (its images are paid for, not saved).

    \b
    Example:
      imgsave batches --json
      imgsave batches cancel batch_abc123
    """
    if ctx.invoked_subcommand is not None:
        return

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.batches import run_batches

        return await run_batches(settings)

    _execute(work, common)


@batches_app.command(name="cancel", epilog=EXIT_CODES)
@shared_options("quiet", "json_output", "database_url", "config", "verbose")
def batches_cancel(
    common: Common,
    batch_id: Annotated[str, typer.Argument(metavar="ID", help="The batch to cancel.")],
) -> None:
    """Cancel one of this database's batches; what finished is still collected.

    \b
    Example:
      imgsave batches cancel batch_abc123
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.batches import run_cancel

        return await run_cancel(settings, batch_id)

    _execute(work, common)


@app.command(epilog=EXIT_CODES)
@shared_options("quiet", "config", "verbose")
def demo(
    common: Common,
) -> None:
    """Tell the incident's story on the embedded database: no keys, no set-up.

    \b
    Example:
      imgsave demo
    """

    async def work(settings: Settings) -> _Result:
        from imgsave._demo.demo import run_demo

        return await run_demo(settings, quiet=common.quiet)

    _execute(work, common)


@app.command(name="config", epilog=EXIT_CODES)
@shared_options("json_output", "store", "allow_http", "database_url", "config", "verbose")
def config_command(common: Common) -> None:
    """Show every effective setting and where it came from: a flag, an environment variable
    (env NAME), the settings file (file PATH) or the default. Secrets are masked.

    Settings are found in this order: flags, environment, --config (or IMGSAVE_CONFIG),
    ./imgsave.toml, imgsave.toml in the user's config directory; one settings file is read,
    the first that exists.

    \b
    Example:
      imgsave config
      IMGSAVE_CONFIG=/etc/imgsave/imgsave.toml imgsave config --json
    """

    async def work(settings: Settings) -> _Result:
        from imgsave.commands.config import run_config
        from imgsave.core.settings import load_sourced

        return run_config(load_sourced(common.flags(), config_path=common.config, kinds=_kinds()))

    # It shows the monitoring settings; it is no run to report.
    _execute(work, common, watched=False)


def _one_mode(*, dry_run: bool, execute: bool) -> None:
    if dry_run and execute:
        from imgsave.errors import UsageError

        raise UsageError("--dry-run and --execute exclude each other")


class _Result(Protocol):
    """What every command's library function returns."""

    @property
    def exit_code(self) -> int: ...

    def to_json(self) -> dict[str, object]: ...

    def stderr_lines(self) -> list[str]:
        """What must reach stderr whatever the output mode: why a run stopped, and paid
        images that only this printout records."""
        ...

    def render(self, console: Console) -> None:
        """The summary for a person, on stdout."""
        ...


def _execute(
    work: Callable[[Settings], Awaitable[_Result]],
    common: Common,
    *,
    watched: bool = True,
    stream: PlanOutput | None = None,
) -> None:
    """Run a command's work: settings, logging, the operator's monitoring (ping and metrics;
    `watched=False` for a command that is no run, such as `config`), and every way it can end
    turned into its exit code and its output. `stream`: output the work began printing
    itself (a dry run's projects, as they were planned); its JSON object is ended here, with
    the result's keys or the error's."""
    from imgsave.cli.watch import RunWatch
    from imgsave.core.redaction import redact, weak_secret_warnings
    from imgsave.core.settings import MonitorSettings, load_settings
    from imgsave.logs import configure_logging, log_internal_error
    from imgsave.terminal.consoles import error, print_json, stdout_console, warn

    watch = RunWatch(common.command, warn=warn, enabled=watched)
    secrets: tuple[str, ...] = ()
    try:
        try:
            settings = load_settings(common.flags(), config_path=common.config, kinds=_kinds())
        except ImgsaveError:
            watch.known_before_settings(
                MonitorSettings(ping_url=common.ping, metrics_file=common.metrics_file)
            )
            secrets = watch.secrets
            raise
        secrets = settings.secrets
        configure_logging(verbose=common.verbose, secrets=secrets)
        watch.begin(settings.monitor, secrets)
        for message in weak_secret_warnings(settings.api_key, settings.database_url):
            warn(message)
        result = asyncio.run(_awaited(work, settings))
    except ImgsaveError as exc:
        _fail(str(exc), exc.exit_code, secrets, as_json=common.as_json, watch=watch, stream=stream)
    except KeyboardInterrupt:
        _fail(
            "interrupted", EXIT_INTERRUPTED, secrets, as_json=common.as_json, watch=watch,
            stream=stream,
        )  # fmt: skip
    except Exception as exc:  # a bug: say so in one line, never with a secret in it
        log_internal_error(exc)
        hint = "" if common.verbose else " (-v shows the traceback)"
        _fail(
            f"internal error: {type(exc).__name__}: {exc}{hint}",
            EXIT_CANNOT_WORK,
            secrets,
            as_json=common.as_json,
            watch=watch,
            stream=stream,
        )
    for line in result.stderr_lines():
        error(redact(line, secrets))
    summary = result.to_json() if common.as_json or watch.active else None
    if common.as_json and summary is not None:
        if stream is not None:
            stream.close_json(summary)
        else:
            print_json(summary)
    elif not (common.quiet and result.exit_code == 0):
        result.render(stdout_console())
    watch.end(result.exit_code, summary)
    raise typer.Exit(result.exit_code)


async def _awaited(work: Callable[[Settings], Awaitable[_Result]], settings: Settings) -> _Result:
    return await work(settings)


def _fail(
    message: str,
    code: int,
    secrets: tuple[str, ...],
    *,
    as_json: bool,
    watch: RunWatch,
    stream: PlanOutput | None = None,
) -> NoReturn:
    from imgsave.core.redaction import redact
    from imgsave.terminal.consoles import error, print_json

    message = redact(" ".join(message.split()), secrets)
    error(message)
    if as_json and stream is not None and stream.begun:
        # Still one JSON object: the projects printed so far, then why it stopped.
        stream.close_json({"error": message, "exit_code": code})
    elif as_json:
        print_json({"error": message, "exit_code": code})
    watch.end(code, {"error": message, "exit_code": code})
    raise typer.Exit(code)


def _kinds() -> Mapping[str, KindFacts]:
    """What each kind of image API says of itself, for the settings loader."""
    from imgsave.adapters.imageapi.kinds import FACTS

    return FACTS


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(EXIT_INTERRUPTED)
