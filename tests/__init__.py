"""The test suite; `REPOSITORY` is the root of the checkout the tests run from (they read nothing outside it)."""

from pathlib import Path

REPOSITORY = Path(__file__).resolve().parent.parent
