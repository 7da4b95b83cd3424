"""A dataset's declared columns: what an admin declares in JSON, and what every uploaded record must match."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, get_args

ColumnType = Literal["text", "integer", "number", "boolean", "date", "timestamp"]
COLUMN_TYPES: tuple[ColumnType, ...] = get_args(ColumnType)
MAX_COLUMNS = 100

# Lowercase identifiers of at most 63 characters: valid unquoted in SQL and in PostgreSQL's limit, so a
# name can appear in a jsonb expression or a CSV header without quoting surprises.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_KEYS = frozenset({"name", "type", "description"})


class ColumnError(ValueError):
    """A column declaration the gateway cannot accept; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    description: str = ""


def parse_columns(raw: object) -> tuple[Column, ...]:
    """Columns from an admin's JSON: a list of {"name", "type", "description"?} objects."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_COLUMNS:
        raise ColumnError(f"columns must be a list of 1 to {MAX_COLUMNS} objects such as "
                          '{"name": "population", "type": "integer", "description": "people in the mesh"}')
    parsed: list[Column] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"columns[{index}]"
        if not isinstance(item, dict):
            raise ColumnError(f"{where} must be an object with a name and a type")
        unknown = sorted(str(key) for key in item.keys() - _KEYS)
        if unknown:
            raise ColumnError(f"{where} has unknown key(s) {', '.join(unknown)}; "
                              "allowed: name, type, description")
        name, kind, description = item.get("name"), item.get("type"), item.get("description", "")
        if not isinstance(name, str) or not _NAME.fullmatch(name):
            raise ColumnError(f"{where}: name must be 1 to 63 lowercase letters, digits and '_', "
                              f"starting with a letter (got {name!r})")
        if name in seen:
            raise ColumnError(f"{where}: column {name!r} is declared twice; column names must be unique")
        if kind not in COLUMN_TYPES:
            raise ColumnError(f"{where} ({name}): type must be one of {', '.join(COLUMN_TYPES)} "
                              f"(got {kind!r})")
        if not isinstance(description, str) or "\x00" in description:  # jsonb cannot hold U+0000
            raise ColumnError(f"{where} ({name}): description must be a string without NUL (U+0000) characters")
        seen.add(name)
        parsed.append(Column(name, kind, description))
    return tuple(parsed)


def to_json(columns: Iterable[Column]) -> list[dict[str, str]]:
    """The declaration as stored and shown; parse_columns(to_json(c)) == c."""
    return [{"name": c.name, "type": c.type, "description": c.description} for c in columns]
