"""Results as JSON, derived from their dataclass fields, so a field added to a result shows up in
`--json` without a second, hand-written list to forget it in."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields, is_dataclass
from typing import Any

from imgsave.errors import EXIT_OK

# Field metadata: `field(metadata=json_name("log"))` renames a field in the JSON, and
# `field(metadata=NOT_IN_JSON)` leaves it out (it is shown some other way, or is internal).
_KEY = "json"
NOT_IN_JSON: Mapping[str, None] = {_KEY: None}


def json_name(name: str) -> Mapping[str, str]:
    return {_KEY: name}


def fields_json(obj: object) -> dict[str, object]:
    """The dataclass `obj` as a JSON object, field by field, in declaration order."""
    if not is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"{type(obj).__name__} is not a dataclass instance")
    out: dict[str, object] = {}
    for f in fields(obj):
        name = f.metadata.get(_KEY, f.name)
        if name is not None:
            out[name] = plain(getattr(obj, f.name))
    return out


def plain(value: Any) -> object:
    """Dataclasses, tuples and mappings as the JSON values json.dumps takes."""
    to_json = getattr(value, "to_json", None)
    if callable(to_json):
        return to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return fields_json(value)
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    return value


class FieldsResult:
    """For a dataclass result whose return means the work was done: exit 0, nothing that must
    reach stderr, and `--json` from its fields."""

    @property
    def exit_code(self) -> int:
        return EXIT_OK

    def stderr_lines(self) -> list[str]:
        return []

    def to_json(self) -> dict[str, object]:
        return fields_json(self)
