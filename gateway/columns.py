"""A dataset's declared columns: what an admin declares in JSON, and what every uploaded record must match.

Besides its name and type, a column may declare how the vendor's text spells its values (an Excel sheet or
a core system's export): booleans such as TRUE/FALSE or はい/いいえ, a date or timestamp format such as
%Y/%m/%d, a thousands separator, and the time zone of timestamps written without one. The declaration is
kept with the dataset, so every upload of it is read alike; records are stored, and delivered, in the
canonical forms whatever the spelling. Nothing is guessed: without a declaration the strict forms apply.
"""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal, get_args

ColumnType = Literal["text", "integer", "number", "boolean", "date", "timestamp"]
COLUMN_TYPES: tuple[ColumnType, ...] = get_args(ColumnType)
MAX_COLUMNS = 100

# Lowercase identifiers of at most 63 characters: valid unquoted in SQL and in PostgreSQL's limit, so a
# name can appear in a jsonb expression or a CSV header without quoting surprises.
_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_KEYS = frozenset({"name", "type", "description"})
# The spelling keys, and the column types each applies to.
_SPELLING_KEYS: dict[str, tuple[ColumnType, ...]] = {
    "true": ("boolean",), "false": ("boolean",), "format": ("date", "timestamp"),
    "time_zone": ("timestamp",), "thousands_separator": ("integer", "number")}
THOUSANDS_SEPARATORS = (",",)
MAX_SPELLINGS = 10
MAX_SPELLING_CHARS = 20
MAX_FORMAT_CHARS = 40
# strptime directives a format may use (each at most once), and which each type requires.
FORMAT_DIRECTIVES = ("Y", "m", "d", "H", "M", "S", "f", "z")
_REQUIRED = {"date": {"Y", "m", "d"}, "timestamp": {"Y", "m", "d", "H", "M"}}
_ALLOWED = {"date": {"Y", "m", "d"}, "timestamp": set(FORMAT_DIRECTIVES)}
_CONTROL = re.compile("[\x00-\x1f\x7f]")


class ColumnError(ValueError):
    """A column declaration the gateway cannot accept; the message says what to fix."""


@dataclass(frozen=True, slots=True)
class Column:
    name: str
    type: ColumnType
    description: str = ""
    # How the vendor's text spells values (see the module docstring); empty or None: the strict forms.
    true: tuple[str, ...] = ()
    false: tuple[str, ...] = ()
    format: str | None = None
    time_zone: str | None = None
    thousands_separator: str | None = None


def parse_columns(raw: object) -> tuple[Column, ...]:
    """Columns from an admin's JSON: a list of {"name", "type", "description"?, spellings?} objects."""
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_COLUMNS:
        raise ColumnError(f"columns must be a list of 1 to {MAX_COLUMNS} objects such as "
                          '{"name": "population", "type": "integer", "description": "people in the mesh"}')
    parsed: list[Column] = []
    seen: set[str] = set()
    for index, item in enumerate(raw):
        where = f"columns[{index}]"
        if not isinstance(item, dict):
            raise ColumnError(f"{where} must be an object with a name and a type")
        unknown = sorted(str(key) for key in item.keys() - _KEYS - _SPELLING_KEYS.keys())
        if unknown:
            raise ColumnError(f"{where} has unknown key(s) {', '.join(unknown)}; allowed: name, type, description, "
                              f"and the spellings {', '.join(_SPELLING_KEYS)}")
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
        parsed.append(Column(name, kind, description, **_spellings(f"{where} ({name})", kind, item)))
    return tuple(parsed)


def _spellings(where: str, kind: ColumnType, item: dict[str, Any]) -> dict[str, Any]:
    given = {key: item[key] for key in _SPELLING_KEYS if key in item}
    for key in given:
        if kind not in _SPELLING_KEYS[key]:
            raise ColumnError(f"{where}: {key} applies to {' and '.join(_SPELLING_KEYS[key])} columns, "
                              f"not to {kind}")
    found: dict[str, Any] = {}
    if "true" in given or "false" in given:
        found["true"], found["false"] = _booleans(where, given.get("true"), given.get("false"))
    if "format" in given:
        found["format"] = _format(where, kind, given["format"])
    if "time_zone" in given:
        found["time_zone"] = _time_zone(where, given["time_zone"])
    if kind == "timestamp" and "format" in found and "%z" not in found["format"] and "time_zone" not in found:
        raise ColumnError(f"{where}: a format without %z needs a time_zone (e.g. \"Asia/Tokyo\"): a time without "
                          "a zone names no instant")
    if "format" in found and "%z" in found["format"] and "time_zone" in found:
        raise ColumnError(f"{where}: the format's %z gives each value its offset, so time_zone would never apply; "
                          "leave one of them out")
    if "thousands_separator" in given:
        separator = given["thousands_separator"]
        if separator not in THOUSANDS_SEPARATORS:
            allowed = ", ".join(map(repr, THOUSANDS_SEPARATORS))
            raise ColumnError(f"{where}: thousands_separator must be one of {allowed} (got {separator!r})")
        found["thousands_separator"] = separator
    return found


def _booleans(where: str, true: object, false: object) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The declared spellings of true and false: both lists, disjoint, neither taking the other's canonical
    word (true and false keep meaning what they say)."""
    spelt: list[tuple[str, ...]] = []
    for key, words, opposite in (("true", true, "false"), ("false", false, "true")):
        if not (isinstance(words, list) and 1 <= len(words) <= MAX_SPELLINGS
                and all(isinstance(w, str) and 1 <= len(w) <= MAX_SPELLING_CHARS and w == w.strip()
                        and not _CONTROL.search(w) for w in words)):
            raise ColumnError(f"{where}: give both true and false as lists of 1 to {MAX_SPELLINGS} spellings of "
                              f"1 to {MAX_SPELLING_CHARS} characters without surrounding spaces, e.g. "
                              '"true": ["TRUE", "はい"], "false": ["FALSE", "いいえ"]')
        if opposite in words:
            raise ColumnError(f"{where}: {opposite!r} always means {opposite}; it cannot spell {key}")
        spelt.append(tuple(words))
    both = sorted(set(spelt[0]) & set(spelt[1]))
    if both:
        raise ColumnError(f"{where}: {', '.join(map(repr, both))} cannot spell both true and false")
    return spelt[0], spelt[1]


def _format(where: str, kind: ColumnType, text: object) -> str:
    example = "%Y/%m/%d" if kind == "date" else "%Y/%m/%d %H:%M"
    if not isinstance(text, str) or not 1 <= len(text) <= MAX_FORMAT_CHARS or _CONTROL.search(text):
        raise ColumnError(f"{where}: format must be a strptime-style pattern of at most {MAX_FORMAT_CHARS} "
                          f"characters, e.g. {example!r}")
    try:
        tokens = format_tokens(text)
    except ColumnError as exc:
        raise ColumnError(f"{where}: {exc}") from None
    used: list[str] = []
    for directive in tokens:
        if directive.startswith("%") and directive != "%%":
            letter = directive[1:]
            if letter not in _ALLOWED[kind]:
                raise ColumnError(f"{where}: format directive {directive!r} is not one a {kind} may use; allowed: "
                                  f"{', '.join('%' + d for d in FORMAT_DIRECTIVES if d in _ALLOWED[kind])}")
            if letter in used:
                raise ColumnError(f"{where}: format directive {directive!r} appears twice")
            used.append(letter)
    missing = [d for d in FORMAT_DIRECTIVES if d in _REQUIRED[kind] and d not in used]
    if missing:
        raise ColumnError(f"{where}: a {kind} format needs {', '.join('%' + d for d in missing)} (e.g. {example!r})")
    if "f" in used and "S" not in used:
        raise ColumnError(f"{where}: %f (fractions of a second) needs %S (seconds)")
    return text


def format_tokens(text: str) -> list[str]:
    """A format as directives ("%Y", "%%") and literal characters; a lone or unknown '%x' is refused."""
    tokens: list[str] = []
    at = 0
    while at < len(text):
        if text[at] != "%":
            tokens.append(text[at])
            at += 1
            continue
        directive = text[at:at + 2]
        if len(directive) < 2 or directive[1] not in (*FORMAT_DIRECTIVES, "%"):
            raise ColumnError(f"format {text!r}: {directive!r} is not a directive; use %Y %m %d %H %M %S %f %z, "
                              "or %% for a percent sign")
        tokens.append(directive)
        at += 2
    return tokens


def _time_zone(where: str, name: object) -> str:
    if not isinstance(name, str) or not name or len(name) > 64:
        raise ColumnError(f"{where}: time_zone must be an IANA time zone name such as \"Asia/Tokyo\"")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):  # OSError: a folder such as "Asia"
        raise ColumnError(f"{where}: time_zone {name!r} is not an IANA time zone name such as \"Asia/Tokyo\" "
                          "or \"UTC\"") from None
    return name


def to_json(columns: Iterable[Column]) -> list[dict[str, Any]]:
    """The declaration as stored and shown, spellings only where declared; parse_columns(to_json(c)) == c."""
    shown: list[dict[str, Any]] = []
    for c in columns:
        item: dict[str, Any] = {"name": c.name, "type": c.type, "description": c.description}
        if c.true:
            item.update(true=list(c.true), false=list(c.false))
        item.update({key: value for key, value in (("format", c.format), ("time_zone", c.time_zone),
                                                   ("thousands_separator", c.thousands_separator))
                     if value is not None})
        shown.append(item)
    return shown


def same_shape(before: Iterable[Column], after: Iterable[Column]) -> bool:
    """Whether `after` declares the same columns as `before`, by name and type in the same order: what an
    amendment must keep, since the stored records and every licence are made of them."""
    return [(c.name, c.type) for c in before] == [(c.name, c.type) for c in after]
