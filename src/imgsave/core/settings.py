"""Settings from flags, environment and a settings file, in that order of precedence, each one
remembered with where it came from (`imgsave config` shows them).

The settings file is the first that exists of: `--config` (or `IMGSAVE_CONFIG`),
`./imgsave.toml`, and `imgsave.toml` in the user's config directory (`~/.config/imgsave/` on
Linux). One file is read, never a blend: what a run did can be traced to one place.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imgsave.core.documents import Shape
from imgsave.core.kind_facts import KindFacts
from imgsave.core.redaction import (
    credentials_problem,
    database_url_problem,
    url_secrets,
    userinfo_secret,
)
from imgsave.errors import UsageError

CONFIG_FILE_NAME = "imgsave.toml"
# Where a setting came from, when nothing set it.
DEFAULT_SOURCE = "default"


@dataclass(frozen=True)
class Names:
    """Where the document lives in the database."""

    table: str = "projects"
    key_column: str = "id"
    document_column: str = "generated_output"
    updated_at_column: str = "updated_at"


@dataclass(frozen=True)
class ProviderSettings:
    # GPT image models take a minute or more at high quality; a shorter deadline would pay for
    # images it then abandons.
    timeout: float = 600.0
    # Which image API (adapters/imageapi/kinds/; IMGSAVE_PROVIDER).
    kind: str = "openai"
    # The kind's own base URL, from its facts (None: the user's own endpoint, as Azure's).
    default_base_url: str | None = None
    # Azure OpenAI's api-version query parameter.
    api_version: str = "2025-04-01-preview"
    # A job (Replicate, fal, BFL) is polled this often, and for this long at most; one still
    # running then is left in the log, and the next run polls it again.
    poll_interval: float = 1.0
    poll_timeout: float = 900.0
    max_attempts: int = 6
    # Retries after a request the provider may already have billed (a timeout once the body was
    # sent, a 200 that was cut off or unreadable): bounded apart from other retries.
    max_billed_retries: int = 1
    max_retry_after: float = 60.0
    backoff_initial: float = 0.5
    backoff_max: float = 20.0
    size: str = "1024x1024"
    # Requests started per minute across the whole run (`--rate`): "600/min", "10/s"; unset:
    # as fast as --concurrency allows, slowing down only when the provider answers 429.
    rate: str | None = None
    # Generate through the provider's Batch API (half price; `generate --batch`).
    batch: bool = False
    # Seconds between looks at running batches (`generate --batch --wait`).
    batch_poll: float = 10.0
    # What one image costs bought synchronously, in the account's currency: the dry run's
    # estimate, `--max-cost`, and the `cost` in a run's JSON (core/cost.py). Unset: no price,
    # no estimate. Never built in: it depends on the model, size, quality and contract.
    price: float | None = None
    # The price's factor through the Batch API (`--batch`): OpenAI, Azure OpenAI and the Gemini
    # API document half the synchronous price for it.
    batch_discount: float = 0.5
    # A label for amounts, never converted: the image APIs imgsave knows publish their prices
    # in US dollars, so a price copied from a price list is in dollars unless said otherwise.
    currency: str = "USD"
    # [provider.params]: passed through in every request (quality, output_format, background,
    # moderation, ...).
    params: dict[str, str | int | float | bool] = field(default_factory=dict)


@dataclass(frozen=True)
class StoreSettings:
    """Where image bytes are kept: `s3://BUCKET[/PREFIX]` or `file:///DIR`."""

    url: str | None = None
    # The base that turns an object key into the URL saved in the document.
    public_url: str | None = None
    # S3 API: unset values come from the usual AWS_* variables.
    endpoint: str | None = None
    region: str | None = None
    path_style: bool = False
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    allow_http: bool = False
    max_image_bytes: int = 50_000_000
    cache_control: str = "public, max-age=31536000, immutable"


@dataclass(frozen=True)
class DatabaseSettings:
    lock_timeout: float = 5.0
    statement_timeout: float = 30.0
    max_attempts: int = 8
    connect_timeout: float = 10.0


@dataclass(frozen=True)
class ClaimSettings:
    """How long a scene claimed by a run stays claimed without being extended (seconds).

    A live run extends its claims every quarter of this; a dead host's scenes return to the
    pool after it. It must outlast any stretch in which a live host cannot reach the database
    (operations/claims.py)."""

    expiry: float = 600.0
    # Off: no claims table is used. Only for a deployment that runs on one host at a time and
    # cannot create the table; two such runs at once can pay for the same scenes.
    enabled: bool = True


@dataclass(frozen=True)
class SqlSettings:
    """`imgsave sql`: who may call the append function."""

    # Roles given EXECUTE; empty: `authenticated` and `service_role` where they exist (Supabase).
    grant: tuple[str, ...] = ()


@dataclass(frozen=True)
class MonitorSettings:
    """Where a run reports that it ran (DESIGN "Running from cron, watched")."""

    # healthchecks.io's convention: URL/start, then URL/<exit code> with the JSON summary. A
    # secret: whoever has it can report runs that never happened.
    ping_url: str | None = field(default=None, repr=False)
    # The Prometheus textfile collector's file, rewritten atomically at the end of each run.
    metrics_file: str | None = None


@dataclass(frozen=True)
class Settings:
    database_url: str | None = field(default=None, repr=False)
    base_url: str | None = None
    api_key: str | None = field(default=None, repr=False)
    model: str | None = None
    log_dir: Path | None = None
    allow_http: bool = False
    # Downloads may reach loopback, private and link-local addresses
    # (adapters/imageapi/netguard.py): only for an image host on your own network.
    allow_private_network: bool = False
    names: Names = field(default_factory=Names)
    shape: Shape = field(default_factory=Shape)
    provider: ProviderSettings = field(default_factory=ProviderSettings)
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    store: StoreSettings = field(default_factory=StoreSettings)
    sql: SqlSettings = field(default_factory=SqlSettings)
    claims: ClaimSettings = field(default_factory=ClaimSettings)
    monitor: MonitorSettings = field(default_factory=MonitorSettings)

    @property
    def api_base(self) -> str | None:
        """The image API's base URL: IMGSAVE_BASE_URL, else the kind's own once a key is set
        (with neither, no image API was configured, and a run must say so, not call one)."""
        if self.base_url:
            return self.base_url
        return self.provider.default_base_url if self.api_key else None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never reach any output."""
        found = tuple(
            s
            for s in (
                self.api_key,
                self.store.secret_access_key,
                os.environ.get("AWS_SECRET_ACCESS_KEY"),
                os.environ.get("AWS_SESSION_TOKEN"),
            )
            if s
        )
        in_urls = (
            userinfo_secret(url)
            for url in (
                self.base_url,
                self.store.url,
                self.store.public_url,
                self.store.endpoint,
                os.environ.get("AWS_ENDPOINT_URL"),
                os.environ.get("AWS_ENDPOINT"),
            )
        )
        pinged = (self.monitor.ping_url,) if self.monitor.ping_url else ()
        return (
            found + tuple(s for s in in_urls if s) + url_secrets(self.database_url or "") + pinged
        )

    def resolved_log_dir(self) -> Path:
        if self.log_dir is not None:
            return self.log_dir
        import platformdirs

        return Path(platformdirs.user_state_dir("imgsave", appauthor=False))


ENVIRONMENT = {
    "database_url": ("IMGSAVE_DATABASE_URL", "DATABASE_URL"),
    "base_url": ("IMGSAVE_BASE_URL",),
    "api_key": ("IMGSAVE_API_KEY",),
    "kind": ("IMGSAVE_PROVIDER",),
    "model": ("IMGSAVE_MODEL",),
    "log_dir": ("IMGSAVE_LOG_DIR",),
    "store_url": ("IMGSAVE_STORE",),
    "public_url": ("IMGSAVE_PUBLIC_URL",),
    "allow_private_network": ("IMGSAVE_ALLOW_PRIVATE_NETWORK",),
    "ping_url": ("IMGSAVE_PING_URL",),
    "metrics_file": ("IMGSAVE_METRICS_FILE",),
}
# The variable that names the settings file (after --config, before ./imgsave.toml).
CONFIG_VARIABLE = "IMGSAVE_CONFIG"
# The flag each overridable setting has, for `imgsave config`'s sources.
FLAGS = {
    "database_url": "--database-url",
    "store_url": "--store",
    "allow_http": "--allow-http",
    "ping_url": "--ping",
    "metrics_file": "--metrics-file",
}
# Keys of the flags/environment layer that live in a section of the file.
_IN_SECTION = {
    "store_url": "store.url",
    "public_url": "store.public_url",
    "kind": "provider.kind",
    "ping_url": "monitor.ping_url",
    "metrics_file": "monitor.metrics_file",
}

_TOP_KEYS = {
    "database_url",
    "base_url",
    "api_key",
    "model",
    "log_dir",
    "allow_http",
    "allow_private_network",
}
_SECTIONS: dict[str, tuple[type, ...]] = {
    "names": (Names, Shape),
    "provider": (ProviderSettings,),
    "database": (DatabaseSettings,),
    "store": (StoreSettings,),
    "sql": (SqlSettings,),
    "claims": (ClaimSettings,),
    "monitor": (MonitorSettings,),
}


@dataclass(frozen=True)
class Sourced:
    """Settings and, for each one that was set, where: `flag --store`, `env IMGSAVE_STORE`,
    `file PATH`; a setting missing from `sources` has its default."""

    settings: Settings
    sources: Mapping[str, str]
    config_file: Path | None


def user_config_file() -> Path:
    """`imgsave.toml` in the user's config directory (`~/.config/imgsave/` on Linux)."""
    import platformdirs

    return platformdirs.user_config_path("imgsave", appauthor=False) / CONFIG_FILE_NAME


def find_config_file(
    config_path: Path | None,
    environ: Mapping[str, str],
    cwd: Path | None,
    user_file: Path | None,
) -> Path | None:
    """The settings file to read: one that is named must exist; the others are looked for."""
    if config_path is not None:
        return config_path
    named = environ.get(CONFIG_VARIABLE)
    if named:
        return Path(named).expanduser()
    for candidate in ((cwd or Path.cwd()) / CONFIG_FILE_NAME, user_file or user_config_file()):
        if candidate.is_file():
            return candidate
    return None


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user_file: Path | None = None,
    kinds: Mapping[str, KindFacts],
) -> Settings:
    """Merge the settings file, then the environment, then `overrides` (the flags; None = unset)."""
    return load_sourced(
        overrides,
        config_path=config_path,
        environ=environ,
        cwd=cwd,
        user_file=user_file,
        kinds=kinds,
    ).settings


def load_sourced(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    user_file: Path | None = None,
    kinds: Mapping[str, KindFacts],
) -> Sourced:
    """`load_settings`, with where each setting came from. `kinds`: what each kind of image API
    imgsave knows says of itself (adapters/imageapi/kinds/: its default base URL, its key's
    variable)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    file_sections: dict[str, dict[str, Any]] = {}
    sources: dict[str, str] = {}
    path = find_config_file(config_path, environ, cwd, user_file)
    if path is not None:
        merged, file_sections = _read_file(path)
        where = f"file {path}"
        sources.update({_dotted(key): where for key in merged})
        for section, values in file_sections.items():
            sources.update({f"{section}.{key}": where for key in values})
    for key, names in ENVIRONMENT.items():
        for name in names:
            if environ.get(name):
                merged[key] = environ[name]
                sources[_dotted(key)] = f"env {name}"
                break
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
            sources[_dotted(key)] = f"flag {FLAGS.get(key, key)}"
    kind = str(merged.pop("kind", None) or file_sections.get("provider", {}).get("kind", "openai"))
    if kind not in kinds:
        raise UsageError(
            f"unknown image API kind {kind!r} (IMGSAVE_PROVIDER or [provider] kind): "
            f"use one of {', '.join(kinds)}"
        )
    file_sections.setdefault("provider", {})["kind"] = kind
    # The kind's own key variable stands in for IMGSAVE_API_KEY: over the file, under a flag.
    key_variable = kinds[kind].key_variable
    own_key = environ.get(key_variable)
    if own_key and not environ.get("IMGSAVE_API_KEY") and not (overrides or {}).get("api_key"):
        merged["api_key"] = own_key
        sources["api_key"] = f"env {key_variable}"
    problem = database_url_problem(str(merged.get("database_url") or ""))
    if merged.get("database_url") and problem:
        raise UsageError(problem)
    built = _build(merged, file_sections, path)
    provider = replace(built.provider, default_base_url=kinds[kind].default_base_url)
    return Sourced(replace(built, provider=provider), sources, path)


def _dotted(key: str) -> str:
    return _IN_SECTION.get(key, key)


def describe(sourced: Sourced) -> list[tuple[str, object, str]]:
    """Every effective setting as (name, value fit to print, source), secrets masked: the
    database password, the API key, the store's secret key and the ping URL's path."""
    settings = sourced.settings
    rows: list[tuple[str, object, str]] = []
    top = (
        "database_url",
        "base_url",
        "api_key",
        "model",
        "log_dir",
        "allow_http",
        "allow_private_network",
    )
    for name in top:
        rows.append((name, _shown(name, getattr(settings, name)), sourced.sources.get(name, "")))
    by_class: dict[type, Any] = {
        Names: settings.names,
        Shape: settings.shape,
        ProviderSettings: settings.provider,
        DatabaseSettings: settings.database,
        StoreSettings: settings.store,
        SqlSettings: settings.sql,
        ClaimSettings: settings.claims,
        MonitorSettings: settings.monitor,
    }
    for section, classes in _SECTIONS.items():
        for cls in classes:
            instance = by_class[cls]
            for f in fields(instance):
                dotted = f"{section}.{f.name}"
                value = _shown(dotted, getattr(instance, f.name))
                rows.append((dotted, value, sourced.sources.get(dotted, "")))
    return [(name, value, source or DEFAULT_SOURCE) for name, value, source in rows]


_MASKED = "***"


def _shown(name: str, value: object) -> object:
    from urllib.parse import urlsplit, urlunsplit

    from imgsave.core.redaction import mask_url

    if value is None:
        return None
    if name in ("api_key", "store.secret_access_key"):
        return _MASKED
    if name == "database_url":
        return mask_url(str(value))
    if name == "monitor.ping_url":
        try:
            parts = urlsplit(str(value))
        except ValueError:
            return _MASKED
        return urlunsplit((parts.scheme, parts.hostname or "", "/" + _MASKED, "", ""))
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


def _read_file(path: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UsageError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"config file {path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"config file {path} is not valid TOML: {exc}") from None
    top: dict[str, Any] = {}
    sections: dict[str, dict[str, Any]] = {}
    for key, value in data.items():
        if key in _SECTIONS and isinstance(value, dict):
            sections[key] = value
        elif key in _TOP_KEYS:
            top[key] = value
        else:
            raise UsageError(f"config file {path}: unknown setting {key!r}")
    return top, sections


def _build(
    merged: dict[str, Any], sections: dict[str, dict[str, Any]], path: Path | None
) -> Settings:
    built: dict[str, Any] = {}
    for section, classes in _SECTIONS.items():
        given = dict(sections.get(section, {}))
        for cls in classes:
            known = {f.name: f for f in fields(cls)}
            picked = {k: given.pop(k) for k in list(given) if k in known}
            instance = cls()
            for key, value in picked.items():
                default = getattr(instance, key)
                where = f"{path}: [{section}] {key}"
                picked[key] = (
                    _price(value, where, key)
                    if cls is ProviderSettings and key in _PRICES
                    else _coerce(value, default, where)
                )
            built[cls.__name__] = replace(instance, **picked)
        if given:
            raise UsageError(
                f"config file {path}: unknown setting [{section}] {sorted(given)[0]!r}"
            )
    log_dir = merged.get("log_dir")
    store: StoreSettings = built["StoreSettings"]
    if merged.get("store_url"):
        store = replace(store, url=str(merged["store_url"]))
    if merged.get("public_url"):
        store = replace(store, public_url=str(merged["public_url"]))
    monitor: MonitorSettings = built["MonitorSettings"]
    if merged.get("ping_url"):
        monitor = replace(monitor, ping_url=str(merged["ping_url"]))
    if merged.get("metrics_file"):
        monitor = replace(monitor, metrics_file=str(merged["metrics_file"]))
    keys = (
        "[store] access_key_id and secret_access_key in imgsave.toml, or AWS_ACCESS_KEY_ID "
        "and AWS_SECRET_ACCESS_KEY"
    )
    for problem in (
        credentials_problem(store.url, "the store URL (IMGSAVE_STORE, --store)", keys),
        credentials_problem(store.endpoint, "[store] endpoint", keys),
        credentials_problem(
            store.public_url,
            "the public URL (IMGSAVE_PUBLIC_URL)",
            "it is written into every saved image URL; serve the objects publicly",
        ),
        credentials_problem(
            _opt_str(merged.get("base_url")),
            "the image API URL (IMGSAVE_BASE_URL)",
            "the key goes in IMGSAVE_API_KEY",
        ),
        ping_url_problem(monitor.ping_url),
    ):
        if problem:
            raise UsageError(problem)
    return Settings(
        database_url=_opt_str(merged.get("database_url")),
        base_url=_opt_str(merged.get("base_url")),
        api_key=_opt_str(merged.get("api_key")),
        model=_opt_str(merged.get("model")),
        log_dir=Path(log_dir).expanduser() if log_dir else None,
        allow_http=bool(merged.get("allow_http", False)),
        allow_private_network=_flag(merged.get("allow_private_network", False)),
        names=built["Names"],
        shape=built["Shape"],
        provider=built["ProviderSettings"],
        database=built["DatabaseSettings"],
        store=store,
        sql=built["SqlSettings"],
        claims=built["ClaimSettings"],
        monitor=monitor,
    )


def ping_url_problem(url: str | None) -> str | None:
    """Why a ping URL cannot be used; the URL itself is never repeated (it is a secret)."""
    from urllib.parse import urlsplit

    if url is None:
        return None
    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        return "the ping URL (--ping, IMGSAVE_PING_URL, [monitor] ping_url) must be an http(s) URL"
    return None


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, dict):
        scalar = str | int | float | bool
        if not isinstance(value, dict) or not all(isinstance(v, scalar) for v in value.values()):
            raise UsageError(f"config file {where} must be a table of strings, numbers or booleans")
        return dict(value)
    if isinstance(default, tuple):
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise UsageError(f"config file {where} must be a non-empty list of strings")
        return tuple(value)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise UsageError(f"config file {where} must be true or false")
        return value
    if isinstance(default, int | float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
            raise UsageError(f"config file {where} must be a positive number")
        return type(default)(value)
    if not isinstance(value, str) or not value:
        raise UsageError(f"config file {where} must be a non-empty string")
    return value


# [provider] numbers that are money: a price per image, and the batch's factor of it.
_PRICES = ("price", "batch_discount")


def _price(value: Any, where: str, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value < 1e12:
        raise UsageError(f"config file {where} must be a positive number, such as 0.04")
    if key == "batch_discount" and value > 1:
        raise UsageError(
            f"config file {where} is the batch price's factor of [provider] price: at most 1 "
            "(0.5 for half price)"
        )
    return float(value)


def _flag(value: Any) -> bool:
    """A boolean from the file (true/false) or the environment (1/true/yes, 0/false/no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("", "0", "false", "no", "off"):
        return False
    raise UsageError(f"allow_private_network: {value!r} is not true or false")


def _opt_str(value: Any) -> str | None:
    return str(value) if value not in (None, "") else None
