"""The demo dataset: METI's example of limited provision data, mobile-location population per area.

A carrier estimates from its network how many people were in each 1 km mesh (JIS X 0410 third-level
mesh) every hour, nationwide, and sells the figures per prefecture. The records are made up but
plausible: meshes around each prefectural office, more people in bigger prefectures and city centres,
a daily rhythm. They are generated deterministically (a seeded random.Random, no hash-ordered
iteration) so every run of the demo publishes the same data.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final

from gateway.columns import Column

# (JIS X 0401 code, name, romaji, prefectural office latitude and longitude, population in thousands at
# the 2020 census). The office places the prefecture's meshes; the population weights its share of rows.
_FACTS: Final = (
    ("01", "北海道", "Hokkaido", 43.0642, 141.3469, 5225),
    ("02", "青森県", "Aomori", 40.8244, 140.7400, 1238),
    ("03", "岩手県", "Iwate", 39.7036, 141.1527, 1211),
    ("04", "宮城県", "Miyagi", 38.2689, 140.8721, 2302),
    ("05", "秋田県", "Akita", 39.7186, 140.1024, 960),
    ("06", "山形県", "Yamagata", 38.2404, 140.3633, 1068),
    ("07", "福島県", "Fukushima", 37.7503, 140.4676, 1833),
    ("08", "茨城県", "Ibaraki", 36.3418, 140.4468, 2867),
    ("09", "栃木県", "Tochigi", 36.5658, 139.8836, 1933),
    ("10", "群馬県", "Gunma", 36.3911, 139.0608, 1939),
    ("11", "埼玉県", "Saitama", 35.8570, 139.6489, 7345),
    ("12", "千葉県", "Chiba", 35.6051, 140.1233, 6284),
    ("13", "東京都", "Tokyo", 35.6895, 139.6917, 14048),
    ("14", "神奈川県", "Kanagawa", 35.4478, 139.6425, 9237),
    ("15", "新潟県", "Niigata", 37.9026, 139.0232, 2201),
    ("16", "富山県", "Toyama", 36.6953, 137.2113, 1035),
    ("17", "石川県", "Ishikawa", 36.5947, 136.6256, 1133),
    ("18", "福井県", "Fukui", 36.0652, 136.2216, 767),
    ("19", "山梨県", "Yamanashi", 35.6642, 138.5684, 810),
    ("20", "長野県", "Nagano", 36.6513, 138.1810, 2048),
    ("21", "岐阜県", "Gifu", 35.3912, 136.7223, 1979),
    ("22", "静岡県", "Shizuoka", 34.9769, 138.3831, 3633),
    ("23", "愛知県", "Aichi", 35.1802, 136.9066, 7542),
    ("24", "三重県", "Mie", 34.7303, 136.5086, 1770),
    ("25", "滋賀県", "Shiga", 35.0045, 135.8686, 1414),
    ("26", "京都府", "Kyoto", 35.0212, 135.7556, 2578),
    ("27", "大阪府", "Osaka", 34.6863, 135.5200, 8838),
    ("28", "兵庫県", "Hyogo", 34.6913, 135.1830, 5465),
    ("29", "奈良県", "Nara", 34.6853, 135.8327, 1324),
    ("30", "和歌山県", "Wakayama", 34.2260, 135.1675, 923),
    ("31", "鳥取県", "Tottori", 35.5036, 134.2383, 553),
    ("32", "島根県", "Shimane", 35.4723, 133.0505, 671),
    ("33", "岡山県", "Okayama", 34.6618, 133.9344, 1888),
    ("34", "広島県", "Hiroshima", 34.3966, 132.4596, 2800),
    ("35", "山口県", "Yamaguchi", 34.1859, 131.4714, 1342),
    ("36", "徳島県", "Tokushima", 34.0658, 134.5593, 720),
    ("37", "香川県", "Kagawa", 34.3401, 134.0434, 950),
    ("38", "愛媛県", "Ehime", 33.8416, 132.7657, 1335),
    ("39", "高知県", "Kochi", 33.5597, 133.5311, 692),
    ("40", "福岡県", "Fukuoka", 33.6064, 130.4181, 5135),
    ("41", "佐賀県", "Saga", 33.2494, 130.2988, 811),
    ("42", "長崎県", "Nagasaki", 32.7448, 129.8737, 1312),
    ("43", "熊本県", "Kumamoto", 32.7898, 130.7417, 1738),
    ("44", "大分県", "Oita", 33.2382, 131.6126, 1124),
    ("45", "宮崎県", "Miyazaki", 31.9111, 131.4239, 1070),
    ("46", "鹿児島県", "Kagoshima", 31.5602, 130.5581, 1588),
    ("47", "沖縄県", "Okinawa", 26.2124, 127.6809, 1467),
)

PREFECTURES: Final[tuple[tuple[str, str, str], ...]] = tuple((code, name, romaji)
                                                             for code, name, romaji, *_ in _FACTS)

DEMO_PARTITION_COLUMN: Final = "prefecture"
DEMO_COLUMNS: Final[tuple[Column, ...]] = (
    Column("prefecture", "text", "Prefecture as its JIS X 0401 code, e.g. 13 for Tokyo; the unit of sale"),
    Column("mesh_code", "text", "JIS X 0410 third-level (about 1 km) mesh code, 8 digits"),
    Column("hour", "timestamp", "Start of the hour the estimate covers, in UTC"),
    Column("population", "integer", "Estimated number of people in the mesh during that hour"),
)
# Shibuya Analytics buys Tokyo and Kanagawa; Namba Retail Research buys Osaka.
DEMO_PARTITIONS_BY_MEMBER: Final[Mapping[str, tuple[str, ...]]] = {
    "Shibuya Analytics": ("13", "14"),
    "Namba Retail Research": ("27",),
}

# One week of hours in Japan time, 2020-04-01 00:00 to 2020-04-07 23:00 JST.
_JST = timedelta(hours=9)
_FIRST_HOUR = datetime(2020, 4, 1, tzinfo=UTC) - _JST
_HOURS = 7 * 24
# A first-level mesh is 40' of latitude by 1° of longitude, cut into 80 x 80 third-level meshes.
_CELLS = 80


def _cell(latitude: float, longitude: float) -> tuple[int, int, int, int]:
    """The first-level mesh (latitude and longitude parts) and the third-level row and column within it."""
    rows, columns = latitude * 1.5, longitude - 100
    return int(rows), int(columns), int((rows % 1) * _CELLS), int((columns % 1) * _CELLS)


def _mesh_code(first_lat: int, first_lon: int, row: int, column: int) -> str:
    """JIS X 0410: the first level's 2+2 digits, then a latitude and a longitude digit for the second
    level (0-7) and the third (0-9)."""
    return f"{first_lat:02d}{first_lon:02d}{row // 10}{column // 10}{row % 10}{column % 10}"


def _rows_per_prefecture(count: int) -> list[int]:
    """`count` shared out by population, exactly (largest remainders, ties to the lower code)."""
    total = sum(f[5] for f in _FACTS)
    quotas = [count * f[5] for f in _FACTS]
    shares = [q // total for q in quotas]
    by_remainder = sorted(range(len(_FACTS)), key=lambda i: (-(quotas[i] % total), i))
    for i in by_remainder[:count - sum(shares)]:
        shares[i] += 1
    return shares


def demo_records(count: int = 120_000, *, seed: int = 2020) -> Iterator[dict[str, str | int]]:
    """`count` records, hour by hour, each prefecture's meshes in code order; the same on every run."""
    if not 0 <= count <= 5_000_000:
        # More would need more meshes around an office than its first-level mesh holds.
        raise ValueError("the demo has 0 to 5,000,000 records")
    return _generate(count, random.Random(seed))


def _generate(count: int, rng: random.Random) -> Iterator[dict[str, str | int]]:
    # (prefecture, mesh code, daytime peak, hours covered): every mesh covers the whole week but the
    # last of each prefecture, which takes what is left of the prefecture's rows.
    meshes: list[tuple[str, str, float, int]] = []
    for (code, _, _, latitude, longitude, thousands), rows in zip(_FACTS, _rows_per_prefecture(count)):
        first_lat, first_lon, row0, column0 = _cell(latitude, longitude)
        # The nearest cells to the office first: a city and its surroundings, densest at the centre.
        cells = sorted(((r - row0) ** 2 + (c - column0) ** 2, r, c)
                       for r in range(_CELLS) for c in range(_CELLS))
        # About 60,000 people in central Tokyo's busiest mesh by day; smaller prefectures have smaller
        # centres, though less than in proportion, and each kilometre out has some 15% fewer people.
        centre_peak = 60_000 * (thousands / 14048) ** 0.7
        for index in range(-(-rows // _HOURS)):
            squared, row, column = cells[index]
            peak = centre_peak * math.exp(-math.sqrt(squared) / 6) * rng.lognormvariate(0, 0.35)
            meshes.append((code, _mesh_code(first_lat, first_lon, row, column), peak,
                           min(_HOURS, rows - index * _HOURS)))
    meshes.sort(key=lambda m: (m[0], m[1]))
    for hour in range(_HOURS):
        moment = _FIRST_HOUR + timedelta(hours=hour)
        local = moment + _JST
        # People gather in centres by day and spread out at night; weekends are quieter (4-5 April 2020).
        rhythm = 0.45 + 0.55 * math.exp(-(((local.hour - 14) / 5) ** 2))
        if local.weekday() >= 5:
            rhythm *= 0.85
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%SZ")
        for code, mesh, peak, hours in meshes:
            if hour < hours:
                yield {"prefecture": code, "mesh_code": mesh, "hour": stamp,
                       "population": round(peak * rhythm * rng.uniform(0.92, 1.08))}


def demo_csv_chunks(count: int = 120_000, *, seed: int = 2020, chunk_bytes: int = 1 << 16) -> Iterator[bytes]:
    """demo_records(count, seed=seed) as a CSV upload, header first, in chunks of `chunk_bytes` (the
    last shorter): the demo publishes through the same upload path as a vendor."""
    return _chunked(demo_records(count, seed=seed), chunk_bytes)


def _chunked(records: Iterator[dict[str, str | int]], chunk_bytes: int) -> Iterator[bytes]:
    pending = bytearray(",".join(c.name for c in DEMO_COLUMNS).encode() + b"\n")
    for record in records:
        # Values come in DEMO_COLUMNS order, and none holds a comma, a quote or a line break to quote.
        pending += ",".join(map(str, record.values())).encode() + b"\n"
        while len(pending) >= chunk_bytes:
            yield bytes(pending[:chunk_bytes])
            del pending[:chunk_bytes]
    if pending:
        yield bytes(pending)
