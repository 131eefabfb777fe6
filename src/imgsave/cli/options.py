"""The options the commands share, each declared once: the shared ones (`--config`, `--json`,
`-v`, `--allow-http`, `--database-url`, `-q`, `--store`, and on every command `--ping` and
`--metrics-file`) collected into a `Common` by `shared_options`, and audit's and repair's log
sources into a `LogSources` by `log_source_options`. Typer reads a command's options from its
signature, so each decorator shows its parameters in place of the one object the command
receives.

An option that has an environment variable names it in `--help`; its value is handed to the
settings only when it was given on the command line (settings.py reads the environment
itself), so that `imgsave config` can tell a flag from a variable."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    from imgsave.adapters.runlog.reader import LogQuery

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        envvar="IMGSAVE_CONFIG",
        show_envvar=True,
        metavar="FILE",
        help="Settings file (default: ./imgsave.toml, else imgsave.toml in the user's config "
        "directory, ~/.config/imgsave/ on Linux; `imgsave config` shows which).",
    ),
]
PingOption = Annotated[
    str | None,
    typer.Option(
        "--ping",
        envvar="IMGSAVE_PING_URL",
        show_envvar=True,
        metavar="URL",
        show_default=False,
        help="A healthchecks.io check's ping URL (a secret): URL/start when the run begins, "
        "URL/<exit code> with the JSON summary when it ends. Also [monitor] ping_url.",
    ),
]
MetricsFileOption = Annotated[
    str | None,
    typer.Option(
        "--metrics-file",
        envvar="IMGSAVE_METRICS_FILE",
        show_envvar=True,
        metavar="PATH",
        show_default=False,
        help="At exit, write the run's metrics to this Prometheus textfile-collector file "
        "(*.prom). Also [monitor] metrics_file.",
    ),
]
JsonOption = Annotated[
    bool,
    typer.Option(
        "--json", metavar="", help="Print exactly one JSON object on stdout, nothing else."
    ),
]
VerboseOption = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        envvar="IMGSAVE_DEBUG",
        show_envvar=True,
        metavar="",
        help="Show imgsave's debug log (retries, batches) and the traceback of an internal error.",
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
# `imgsave sql` installs the rule rather than applying it.
AllowHttpSqlOption = Annotated[
    bool,
    typer.Option(
        "--allow-http",
        metavar="",
        help="The installed function also accepts plain http:// image URLs (default: https).",
    ),
]
StoreOption = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar="IMGSAVE_STORE",
        show_envvar=True,
        metavar="URL",
        show_default=False,
        help="Where image bytes are kept: s3://BUCKET[/PREFIX] or file:///DIR "
        "(with IMGSAVE_PUBLIC_URL, the base of the URLs saved).",
    ),
]
QuietOption = Annotated[
    bool,
    typer.Option(
        "--quiet", "-q", metavar="", help="Print nothing unless something is wrong (for cron)."
    ),
]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", metavar="", help="Only show the plan (the default).")
]
ConcurrencyOption = Annotated[
    int,
    typer.Option(
        "--concurrency", "-c", min=1, max=1024, metavar="C", help="Provider calls at once."
    ),
]
MaxCostOption = Annotated[
    str | None,
    typer.Option(
        "--max-cost",
        metavar="AMOUNT",
        show_default=False,
        help="Spend at most AMOUNT in this run, at [provider] price per image (with --batch: "
        "times [provider] batch_discount); with --max-images, the smaller cap wins.",
    ),
]
MaxImagesOption = Annotated[
    int | None,
    typer.Option(
        "--max-images",
        min=1,
        metavar="N",
        show_default=False,
        help="Buy at most N images in this run, in every mode (with --batch: images "
        "submitted); what is left is reported (exit 1).",
    ),
]


@dataclass(frozen=True)
class Common:
    """The shared options a command was given, and which command it is."""

    config: Path | None = None
    as_json: bool = False
    verbose: bool = False
    allow_http: bool = False
    database_url: str | None = None
    quiet: bool = False
    store: str | None = None
    ping: str | None = None
    metrics_file: str | None = None
    # The command as typed after `imgsave` ("generate", "batches cancel"): the metrics' label.
    command: str = ""
    # Options whose value came from their environment variable, not the command line.
    from_environment: frozenset[str] = frozenset()

    def flags(self) -> dict[str, object]:
        """The settings given on the command line (None: not given), as load_settings takes
        them; a value from an option's environment variable is left to load_settings."""
        given = {
            "allow_http": self.allow_http or None,
            "database_url": self.database_url,
            "store_url": self.store,
            "ping_url": self.ping,
            "metrics_file": self.metrics_file,
        }
        return {
            key: (None if _OPTION_OF[key] in self.from_environment else value)
            for key, value in given.items()
        }


# load_settings' key -> Common's field.
_OPTION_OF = {
    "allow_http": "allow_http",
    "database_url": "database_url",
    "store_url": "store",
    "ping_url": "ping",
    "metrics_file": "metrics_file",
}


def _keyword(name: str, default: object, annotation: object) -> inspect.Parameter:
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation
    )


# Parameter name -> (Common's field, default, the option).
_SHARED: dict[str, tuple[str, object, object]] = {
    "store": ("store", None, StoreOption),
    "quiet": ("quiet", False, QuietOption),
    "json_output": ("as_json", False, JsonOption),
    "allow_http": ("allow_http", False, AllowHttpOption),
    "allow_http_sql": ("allow_http", False, AllowHttpSqlOption),
    "database_url": ("database_url", None, DatabaseUrlOption),
    "config": ("config", None, ConfigOption),
    "verbose": ("verbose", False, VerboseOption),
    "ping": ("ping", None, PingOption),
    "metrics_file": ("metrics_file", None, MetricsFileOption),
}
# Every command reports to the operator's monitoring (DESIGN "Running from cron, watched").
ALWAYS = ("ping", "metrics_file")
_CONTEXT = "imgsave_context"


def shared_options(*names: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Give a command the shared options `names` (and `--ping`, `--metrics-file`, which every
    command takes), collected into its `common: Common`."""
    unknown = set(names) - set(_SHARED)
    if unknown:
        raise ValueError(f"no shared option {sorted(unknown)}")
    names = tuple(dict.fromkeys((*names, *ALWAYS)))
    extra = tuple(
        _keyword(name, _SHARED[name][1], _SHARED[name][2]) for name in _SHARED if name in names
    )

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        own = inspect.signature(command, eval_str=True).parameters.values()
        # Typer hands the click context to one parameter only: the command's own, if it has one.
        own_context = next((p.name for p in own if p.annotation is typer.Context), None)
        context_parameter = () if own_context else (_keyword(_CONTEXT, None, typer.Context),)

        @functools.wraps(command)
        def wrapper(**kwargs: object) -> None:
            context = kwargs[own_context] if own_context else kwargs.pop(_CONTEXT)
            given: dict[str, object] = {_SHARED[name][0]: kwargs.pop(name) for name in names}
            given["command"] = _command_name(context)
            given["from_environment"] = frozenset(
                _SHARED[name][0] for name in names if _from_environment(context, name)
            )
            command(common=Common(**given), **kwargs)  # type: ignore[arg-type]

        parameters = (
            tuple(p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != "common")
            + extra
            + context_parameter
        )
        wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
        wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
        return wrapper

    return decorate


def _command_name(context: object) -> str:
    """`generate`, `batches cancel`: the command path without the program's name."""
    path = str(getattr(context, "command_path", "") or "")
    return path.partition(" ")[2] or path


def _from_environment(context: object, name: str) -> bool:
    source = getattr(context, "get_parameter_source", lambda _name: None)(name)
    return getattr(source, "name", None) == "ENVIRONMENT"


@dataclass(frozen=True)
class LogSources:
    """Where audit and repair read what was generated: the seven options they share."""

    projects: list[str] | None
    logs: list[str] | None
    pattern: str | None
    project: str | None
    since: str | None
    run_gap: str
    check_urls: bool
    journal: bool

    def query(self, allow_http: bool) -> LogQuery:
        from imgsave.adapters.runlog.reader import LogQuery, compile_pattern
        from imgsave.cli.parsers import parse_duration, parse_time

        if self.pattern:
            compile_pattern(self.pattern, self.project)
        return LogQuery(
            paths=tuple(self.logs or ()),
            pattern=self.pattern,
            project=self.project,
            since=parse_time(self.since) if self.since else None,
            run_gap=parse_duration(self.run_gap, "--run-gap"),
            allow_http=allow_http,
            only_projects=frozenset(self.projects or ()),
            journal=self.journal,
        )


_LOG_SOURCE_PARAMETERS = (
    _keyword(
        "projects",
        None,
        Annotated[
            list[str] | None,
            typer.Argument(
                metavar="PROJECT",
                show_default=False,
                help="Only these projects (default: every project the logs name).",
            ),
        ],
    ),
    _keyword(
        "logs",
        None,
        Annotated[
            list[str] | None,
            typer.Option(
                "--log",
                metavar="PATH",
                help="Log file, directory or glob; .gz is fine. Repeatable. "
                "Default: imgsave's own log directory.",
            ),
        ],
    ),
    _keyword(
        "pattern",
        None,
        Annotated[
            str | None,
            typer.Option(
                "--pattern",
                metavar="REGEX",
                help="Python regex for other systems' logs. Named groups, written (?P<name>...): "
                "url and scene (required); project (else --project), ts (ISO 8601 or epoch "
                "seconds/ms), run, scene_id (optional). Lines that do not match are counted, and "
                "a pattern that matches no line is an error (`imgsave audit --help` shows "
                "examples).",
            ),
        ],
    ),
    _keyword(
        "project",
        None,
        Annotated[
            str | None,
            typer.Option(
                "--project", metavar="ID", help="The project for lines with no project group."
            ),
        ],
    ),
    _keyword(
        "since",
        None,
        Annotated[
            str | None,
            typer.Option(
                "--since", metavar="TIME", help="Only log lines since: ISO time or 2h, 7d."
            ),
        ],
    ),
    _keyword(
        "run_gap",
        "30m",
        Annotated[
            str,
            typer.Option(
                "--run-gap",
                metavar="DURATION",
                help="Lines without a run id farther apart start a new run.",
            ),
        ],
    ),
    _keyword(
        "check_urls",
        False,
        Annotated[
            bool,
            typer.Option(
                "--check-urls",
                metavar="",
                help="Ask each lost URL's host whether it still serves it.",
            ),
        ],
    ),
    _keyword(
        "journal",
        False,
        Annotated[
            bool,
            typer.Option(
                "--journal",
                metavar="",
                help="Also read the database's own journal of every URL written and removed "
                "(imgsave sql --journal installs it); where it speaks, it beats the logs. "
                "--since applies to it too.",
            ),
        ],
    ),
)


def log_source_options(command: Callable[..., None]) -> Callable[..., None]:
    """Give a command the log-source options, collected into its `sources: LogSources`.

    Typer reads a command's options from its signature, so the wrapper shows the seven
    parameters in place of `sources`: one definition, and audit and repair cannot drift apart.
    """
    names = [p.name for p in _LOG_SOURCE_PARAMETERS]

    @functools.wraps(command)
    def wrapper(**kwargs: object) -> None:
        sources = LogSources(**{name: kwargs.pop(name) for name in names})  # type: ignore[arg-type]
        command(sources=sources, **kwargs)

    own = [p for p in inspect.signature(command, eval_str=True).parameters.values()]
    parameters = _LOG_SOURCE_PARAMETERS + tuple(
        p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in own if p.name != "sources"
    )
    wrapper.__signature__ = inspect.Signature(parameters)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in parameters}
    return wrapper
