"""Public test vectors (RFC 9162 Merkle trees, C2SP signed notes), kept with the tests: README.md
names where each group of values was copied from."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FOLDER = Path(__file__).resolve().parent


def load(name: str) -> Any:
    return json.loads((FOLDER / name).read_text("utf-8"))
