"""What each kind of image API says about itself (kinds/<name>.py): its facts (core/kind_facts.py:
default base URL, key variable, whether it needs a model, has jobs, has a Batch API) and the wire
that speaks to it: one that answers with images (wires.py) or one that answers with a job to
poll (jobs.py)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from imgsave.adapters.imageapi.jobs import JobWire
from imgsave.adapters.imageapi.wires import Wire
from imgsave.core.kind_facts import KindFacts
from imgsave.core.settings import ProviderSettings

# (base URL, model, settings) -> the wire.
WireFactory = Callable[[str, str | None, ProviderSettings], Wire]
JobWireFactory = Callable[[str, str | None, ProviderSettings], JobWire]


@dataclass(frozen=True)
class Kind:
    facts: KindFacts
    # Exactly one of the two, as `facts.has_jobs` says.
    wire: WireFactory | None = None
    job_wire: JobWireFactory | None = None
    # The header the key travels in (the loopback emulation checks it there).
    key_header: str = "Authorization"
    # Hosts (a regular expression, matched whole) that are the API's own besides the base URL's,
    # where its answers send a job to be polled: the key follows them over https on port 443,
    # only while the base URL is one of them too (client.py, KeyScope).
    api_hosts: str | None = None
    # A model (endpoint, deployment) this API serves, for examples and the loopback emulation.
    example_model: str = "gpt-image-2"

    def __post_init__(self) -> None:
        if (self.job_wire is not None) != self.facts.has_jobs or (
            (self.wire is None) == (self.job_wire is None)
        ):
            raise TypeError(f"kind {self.facts.name}: give a job wire exactly when it has jobs")

    @property
    def name(self) -> str:
        return self.facts.name

    @property
    def base_path(self) -> str:
        """The path of the default base URL (`/v1`, `/v1beta`, or none)."""
        return urlsplit(self.facts.default_base_url or "").path.rstrip("/")
