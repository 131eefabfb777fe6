"""A run as the operator's monitoring sees it: the start ping, then at the end the exit-code
ping with the JSON summary and the metrics file. Every command goes through it (app.py's
`_execute`); its failures are warnings and never change the exit code."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from imgsave.core.redaction import redact
from imgsave.core.settings import MonitorSettings

if TYPE_CHECKING:
    from imgsave.adapters.monitor.ping import Pinger


@dataclass
class RunWatch:
    command: str
    warn: Callable[[str], None]
    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    # False: a command that is no run (`config`) reports nothing.
    enabled: bool = True
    monitor: MonitorSettings = field(default_factory=MonitorSettings)
    secrets: tuple[str, ...] = ()
    _started: float = field(init=False)
    _pinger: Pinger | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        self._started = self.monotonic()

    @property
    def active(self) -> bool:
        """Whether the end of the run needs its JSON summary."""
        return bool(self.monitor.ping_url or self.monitor.metrics_file)

    def begin(self, monitor: MonitorSettings, secrets: tuple[str, ...]) -> None:
        """The settings are known: ping `start`."""
        self.monitor = monitor if self.enabled else MonitorSettings()
        self.secrets = secrets
        pinger = self._ping()
        if pinger is not None:
            pinger.start()

    def known_before_settings(self, monitor: MonitorSettings) -> None:
        """The settings could not be read: report to what the command line and environment
        named, so a broken settings file still reaches the alert."""
        self.monitor = monitor
        self.secrets = tuple(s for s in (monitor.ping_url,) if s)

    def end(self, exit_code: int, summary: Mapping[str, object] | None) -> None:
        from imgsave.adapters.monitor.metrics import RunOutcome, image_counts, write_metrics
        from imgsave.errors import ImgsaveError

        pinger = self._ping()
        if pinger is not None:
            pinger.finish(exit_code, summary or {"exit_code": exit_code})
        if self.monitor.metrics_file:
            outcome = RunOutcome(
                command=self.command,
                exit_code=exit_code,
                ended_at=self.wall(),
                duration=self.monotonic() - self._started,
                images=image_counts(summary) if summary and "error" not in summary else {},
            )
            try:
                write_metrics(Path(self.monitor.metrics_file).expanduser(), outcome)
            except ImgsaveError as exc:
                self._warn(str(exc))

    def _ping(self) -> Pinger | None:
        if not self.monitor.ping_url:
            return None
        if self._pinger is None:
            from imgsave.adapters.monitor.ping import Pinger

            self._pinger = Pinger(self.monitor.ping_url, warn=self._warn)
        return self._pinger

    def _warn(self, message: str) -> None:
        self.warn(redact(message, self.secrets))
