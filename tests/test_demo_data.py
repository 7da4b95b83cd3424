"""gateway/demo_data.py: the demo dataset is deterministic, nationwide, plausible and uploads cleanly."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import orjson
import pytest

from gateway.columns import parse_columns, to_json
from gateway.demo_data import (
    DEMO_COLUMNS,
    DEMO_PARTITION_COLUMN,
    DEMO_PARTITIONS_BY_MEMBER,
    PREFECTURES,
    demo_csv_chunks,
    demo_records,
)
from gateway.uploads import parse_upload

CODES = [code for code, _, _ in PREFECTURES]
DIGEST = "import hashlib, orjson; from gateway.demo_data import demo_records; " \
         "print(hashlib.sha256(b''.join(orjson.dumps(r) for r in demo_records(5000))).hexdigest())"


async def _chunks(chunks: Iterable[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


def test_the_47_prefectures_in_jis_order() -> None:
    assert [f"{n:02d}" for n in range(1, 48)] == CODES
    names = [name for _, name, _ in PREFECTURES]
    romaji = [r for _, _, r in PREFECTURES]
    assert len(set(names)) == len(set(romaji)) == 47
    assert {name[-1] for name in names} == {"都", "道", "府", "県"}
    assert [n for n in names if not n.endswith("県")] == ["北海道", "東京都", "京都府", "大阪府"]
    assert all(r.isascii() and r.isalpha() and r[0].isupper() for r in romaji)
    assert {PREFECTURES[i] for i in (0, 12, 13, 22, 26, 39, 46)} == {
        ("01", "北海道", "Hokkaido"), ("13", "東京都", "Tokyo"), ("14", "神奈川県", "Kanagawa"),
        ("23", "愛知県", "Aichi"), ("27", "大阪府", "Osaka"), ("40", "福岡県", "Fukuoka"),
        ("47", "沖縄県", "Okinawa")}


def test_the_demo_columns_are_a_valid_declaration() -> None:
    assert [(c.name, c.type) for c in DEMO_COLUMNS] == [
        ("prefecture", "text"), ("mesh_code", "text"), ("hour", "timestamp"), ("population", "integer")]
    assert all(c.description for c in DEMO_COLUMNS)
    assert parse_columns(to_json(DEMO_COLUMNS)) == DEMO_COLUMNS
    assert DEMO_PARTITION_COLUMN == "prefecture"


def test_the_demo_members_buy_tokyo_and_kanagawa_and_osaka() -> None:
    assert dict(DEMO_PARTITIONS_BY_MEMBER) == {"Shibuya Analytics": ("13", "14"),
                                               "Namba Retail Research": ("27",)}


def test_records_are_the_same_on_every_run_and_differ_by_seed() -> None:
    assert list(demo_records(3000)) == list(demo_records(3000))
    assert list(demo_records(3000, seed=1)) != list(demo_records(3000))


@pytest.mark.parametrize("hash_seed", ["0", "12345"])
def test_records_do_not_depend_on_the_hash_seed(hash_seed: str) -> None:
    here = hashlib.sha256(b"".join(orjson.dumps(r) for r in demo_records(5000))).hexdigest()
    env = {**os.environ, "PYTHONHASHSEED": hash_seed}
    there = subprocess.run([sys.executable, "-c", DIGEST], env=env, capture_output=True, text=True,
                           check=True, cwd=Path(__file__).parent.parent).stdout.strip()
    assert there == here


def test_the_default_demo_covers_every_prefecture_weighted_by_population() -> None:
    rows = Counter(r["prefecture"] for r in demo_records())
    assert rows.total() == 120_000
    assert sorted(rows) == CODES
    assert [code for code, _ in rows.most_common(3)] == ["13", "14", "27"]
    assert min(rows.values()) >= 300


def test_mesh_codes_are_third_level_codes_around_each_prefectural_office() -> None:
    records = list(demo_records())
    assert all(re.fullmatch(r"[0-9]{4}[0-7]{2}[0-9]{2}", str(r["mesh_code"])) for r in records)
    first_level = {(str(r["prefecture"]), str(r["mesh_code"])[:4]) for r in records}
    # One first-level mesh each: the one holding the prefectural office.
    assert len(first_level) == 47
    known = {"13": "5339", "14": "5339", "27": "5235", "01": "6441", "40": "5030", "47": "3927"}
    assert known.items() <= dict(first_level).items()
    assert len({(r["mesh_code"], r["hour"]) for r in records}) == len(records)


def test_hours_are_the_first_week_of_april_2020_in_japan_written_in_utc() -> None:
    hours = {str(r["hour"]) for r in demo_records()}
    assert len(hours) == 7 * 24
    assert min(hours) == "2020-03-31T15:00:00Z"  # 2020-04-01 00:00 JST
    assert max(hours) == "2020-04-07T14:00:00Z"  # 2020-04-07 23:00 JST
    assert all(re.fullmatch(r"2020-0[34]-[0-9]{2}T[0-9]{2}:00:00Z", h) for h in hours)


def test_population_is_plausible() -> None:
    records = list(demo_records())
    assert all(isinstance(r["population"], int) and 0 < int(r["population"]) < 200_000 for r in records)

    def total(prefecture: str, hour: str) -> int:
        return sum(int(r["population"]) for r in records
                   if r["prefecture"] == prefecture and r["hour"] == hour)

    # Tokyo at 14:00 JST on a Wednesday: more people in the centre than at 03:00, and more than Tottori.
    assert total("13", "2020-04-01T05:00:00Z") > 1.5 * total("13", "2020-03-31T18:00:00Z")
    assert total("13", "2020-04-01T05:00:00Z") > 10 * total("31", "2020-04-01T05:00:00Z")


def test_csv_chunks_have_the_requested_size() -> None:
    chunks = list(demo_csv_chunks(500, chunk_bytes=1000))
    assert {len(c) for c in chunks[:-1]} == {1000}
    assert 0 < len(chunks[-1]) <= 1000
    assert b"".join(chunks).startswith(b"prefecture,mesh_code,hour,population\n")


@pytest.mark.parametrize(("count", "chunk_bytes"), [(120_000, 1 << 16), (2000, 333), (1, 7)])
async def test_csv_chunks_upload_as_exactly_the_demo_records(count: int, chunk_bytes: int) -> None:
    chunks = demo_csv_chunks(count, chunk_bytes=chunk_bytes)
    rows = [row async for batch in parse_upload(_chunks(chunks), "csv", DEMO_COLUMNS, DEMO_PARTITION_COLUMN)
            for row in batch]
    assert len(rows) == count
    assert rows == [(r["prefecture"], orjson.dumps(r).decode()) for r in demo_records(count)]


def test_the_record_count_is_bounded() -> None:
    assert list(demo_records(0)) == []
    with pytest.raises(ValueError, match="0 to 5,000,000"):
        demo_records(-1)
    with pytest.raises(ValueError, match="0 to 5,000,000"):
        demo_csv_chunks(5_000_001)
