"""Every kind of image API imgsave speaks, one module each (openai, azure, gemini, replicate,
fal, bfl), each stating its facts and its wire as `KIND` (kind.py). The registry is found, not
listed: a module added here is a kind, and settings, the loopback emulation and the tests'
parametrisation all read `KINDS`. A kind's module imports only the core and the image API
adapter's shared modules (kind.py, wires.py, jobs.py)."""

from __future__ import annotations

import importlib
import pkgutil

from imgsave.adapters.imageapi.jobs import JobWire
from imgsave.adapters.imageapi.kind import Kind
from imgsave.adapters.imageapi.wires import Wire
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings
from imgsave.errors import UsageError


def _found() -> dict[str, Kind]:
    kinds: dict[str, Kind] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name.startswith("_"):
            continue
        kind = importlib.import_module(f"{__name__}.{module.name}").KIND
        if not isinstance(kind, Kind) or kind.name != module.name:
            raise TypeError(f"{__name__}.{module.name}.KIND is not the Kind named {module.name}")
        kinds[kind.name] = kind
    return kinds


KINDS: dict[str, Kind] = _found()
# What the settings loader needs to know of each kind.
FACTS: dict[str, KindFacts] = {name: kind.facts for name, kind in KINDS.items()}


def kind_named(name: str) -> Kind:
    try:
        return KINDS[name]
    except KeyError:
        raise UsageError(
            f"unknown image API kind {name!r} (IMGSAVE_PROVIDER or [provider] kind): use one "
            f"of {', '.join(KINDS)}"
        ) from None


def wire_for(name: str, base_url: str, model: str | None, settings: ProviderSettings) -> Wire:
    """The wire of a kind that answers with its images."""
    factory = kind_named(name).wire
    if factory is None:
        raise TypeError(f"the {name} API answers with jobs: use job_wire_for")
    return factory(base_url, model, settings)


def job_wire_for(
    name: str, base_url: str, model: str | None, settings: ProviderSettings
) -> JobWire:
    """The wire of a kind that answers with a job to poll."""
    factory = kind_named(name).job_wire
    if factory is None:
        raise TypeError(f"the {name} API answers with images: use wire_for")
    return factory(base_url, model, settings)
