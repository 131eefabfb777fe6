"""Settings from flags, environment and `imgsave.toml`, in that order of precedence."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from imgsave.core.documents import Shape
from imgsave.core.redaction import credentials_problem, url_secrets, userinfo_secret
from imgsave.errors import UsageError

CONFIG_FILE_NAME = "imgsave.toml"


@dataclass(frozen=True)
class Names:
    """Where the document lives in the database."""

    table: str = "projects"
    key_column: str = "id"
    document_column: str = "generated_output"
    updated_at_column: str = "updated_at"


# Each kind of image API (adapters/imageapi/wires.py): its default base URL (None: the
# user's own endpoint), and the variable its own SDKs read the key from.
PROVIDER_KINDS: dict[str, tuple[str | None, str]] = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY"),
    "azure": (None, "AZURE_OPENAI_API_KEY"),
    "gemini": ("https://generativelanguage.googleapis.com/v1beta", "GEMINI_API_KEY"),
    "replicate": ("https://api.replicate.com/v1", "REPLICATE_API_TOKEN"),
    "fal": ("https://queue.fal.run", "FAL_KEY"),
    "bfl": ("https://api.bfl.ai/v1", "BFL_API_KEY"),
}
# The kinds that answer with a job to poll (adapters/imageapi/jobs.py).
JOB_KINDS = frozenset({"replicate", "fal", "bfl"})


def no_image_api(kind: str) -> str:
    """What a run that needs an image API, and was told of none, says."""
    default, key = PROVIDER_KINDS[kind]
    if default is None:
        return f"no image API: set IMGSAVE_BASE_URL to your {kind} endpoint, and IMGSAVE_API_KEY"
    return (
        f"no image API: set IMGSAVE_API_KEY (or {key}), and IMGSAVE_BASE_URL for an API at "
        "another address"
    )


@dataclass(frozen=True)
class ProviderSettings:
    # GPT image models take a minute or more at high quality; a shorter deadline would pay for
    # images it then abandons.
    timeout: float = 600.0
    # Which image API (PROVIDER_KINDS; IMGSAVE_PROVIDER).
    kind: str = "openai"
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

    @property
    def api_base(self) -> str | None:
        """The image API's base URL: IMGSAVE_BASE_URL, else the kind's own once a key is set
        (with neither, no image API was configured, and a run must say so, not call one)."""
        if self.base_url:
            return self.base_url
        return PROVIDER_KINDS[self.provider.kind][0] if self.api_key else None

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
            for url in (self.base_url, self.store.url, self.store.public_url, self.store.endpoint)
        )
        return found + tuple(s for s in in_urls if s) + url_secrets(self.database_url or "")

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
}


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    config_path: Path | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Merge the config file, then the environment, then `overrides` (the flags; None = unset)."""
    environ = os.environ if environ is None else environ
    merged: dict[str, Any] = {}
    file_sections: dict[str, dict[str, Any]] = {}
    path = config_path or (cwd or Path.cwd()) / CONFIG_FILE_NAME
    if config_path is not None or path.is_file():
        merged, file_sections = _read_file(path)
    for key, names in ENVIRONMENT.items():
        for name in names:
            if environ.get(name):
                merged[key] = environ[name]
                break
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[key] = value
    kind = str(merged.pop("kind", None) or file_sections.get("provider", {}).get("kind", "openai"))
    if kind not in PROVIDER_KINDS:
        raise UsageError(
            f"unknown image API kind {kind!r} (IMGSAVE_PROVIDER or [provider] kind): "
            f"use one of {', '.join(PROVIDER_KINDS)}"
        )
    file_sections.setdefault("provider", {})["kind"] = kind
    # The kind's own key variable stands in for IMGSAVE_API_KEY: over the file, under a flag.
    own_key = environ.get(PROVIDER_KINDS[kind][1])
    if own_key and not environ.get("IMGSAVE_API_KEY") and not (overrides or {}).get("api_key"):
        merged["api_key"] = own_key
    return _build(merged, file_sections, path)


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


def _build(merged: dict[str, Any], sections: dict[str, dict[str, Any]], path: Path) -> Settings:
    built: dict[str, Any] = {}
    for section, classes in _SECTIONS.items():
        given = dict(sections.get(section, {}))
        for cls in classes:
            known = {f.name: f for f in fields(cls)}
            picked = {k: given.pop(k) for k in list(given) if k in known}
            instance = cls()
            for key, value in picked.items():
                default = getattr(instance, key)
                picked[key] = _coerce(value, default, f"{path}: [{section}] {key}")
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
    )


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
