"""`imgsave config`: every effective setting and where it came from (a flag, an environment
variable, the settings file, or the default), secrets masked: what a cron line whose
environment is not the shell's will actually use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from imgsave.core.result_json import FieldsResult
from imgsave.core.settings import Sourced, describe
from imgsave.terminal.consoles import shown

if TYPE_CHECKING:
    from rich.console import Console


@dataclass(frozen=True)
class ConfigResult(FieldsResult):
    config_file: Path | None
    rows: list[tuple[str, object, str]]

    def to_json(self) -> dict[str, object]:
        return {
            "config_file": str(self.config_file) if self.config_file else None,
            "settings": {
                name: {"value": value, "source": source} for name, value, source in self.rows
            },
        }

    def render(self, console: Console) -> None:
        from rich.table import Table

        where = str(self.config_file) if self.config_file else "none found"
        console.print(f"settings file: {shown(where)}")
        table = Table(box=None, pad_edge=False)
        table.add_column("setting", no_wrap=True)
        table.add_column("value", overflow="fold")
        table.add_column("from", no_wrap=True)
        for name, value, source in self.rows:
            text = "" if value is None else json.dumps(value, ensure_ascii=False)
            table.add_row(shown(name), shown(text), shown(source))
        console.print(table)


def run_config(sourced: Sourced) -> ConfigResult:
    return ConfigResult(sourced.config_file, describe(sourced))
