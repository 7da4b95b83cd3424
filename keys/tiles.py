"""A Merkle tree stored as C2SP tlog-tiles (c2sp.org/tlog-tiles): what to store, and proofs from it.

A tile at tile level L and index N holds the hashes of the complete subtrees of height 8L numbered
256N, 256N+1, ... (at level 0: leaf hashes), at most 256 of them. A full tile (256 hashes) never
changes; the right-most tile of a level is partial and only ever grows, so the tiles of a tree of
size n are exactly the tiles of every smaller tree, each read as a prefix. Every complete subtree
(height h, index j) is the root over 2**(h - 8L) consecutive hashes of one tile, L = h // 8: a proof
reads at most two tiles per tile level and hashes at most 255 hashes per tile it reads.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from keys.merkle import HASH_BYTES, CompactRange, MerkleTree

TILE_HEIGHT = 8
TILE_WIDTH = 1 << TILE_HEIGHT
FULL_TILE_BYTES = TILE_WIDTH * HASH_BYTES
MAX_LEVEL = 63  # 8 * 63 bits: more leaves than any log holds

# tile/<L>/<N>[.p/<W>]: N in groups of three digits, all but the last prefixed x; W is 1..255.
_TILE_PATH = re.compile(r"tile/(0|[1-9][0-9]?)/((?:x[0-9]{3}/)*[0-9]{3})(?:\.p/([1-9][0-9]{0,2}))?")

TileKey = tuple[int, int]  # (tile level, tile index)


def tile_path(level: int, index: int, width: int = TILE_WIDTH) -> str:
    """The tlog-tiles path of a tile: `tile/<L>/<N>`, or `…/<N>.p/<W>` for a partial one."""
    digits = f"{index:d}"
    digits = "0" * (-len(digits) % 3) + digits
    groups = [digits[i:i + 3] for i in range(0, len(digits), 3)]
    path = f"tile/{level}/" + "/".join([*(f"x{g}" for g in groups[:-1]), groups[-1]])
    return path if width == TILE_WIDTH else f"{path}.p/{width}"


def parse_tile_path(path: str) -> tuple[int, int, int]:
    """(level, index, width) of a tlog-tiles hash tile path; ValueError for any other spelling."""
    match = _TILE_PATH.fullmatch(path)
    if match is None:
        raise ValueError(f"{path!r} is not a tile path (tile/<L>/<N>[.p/<W>])")
    level, groups, width = match.groups()
    parts = groups.split("/")
    if len(parts) > 1 and parts[0] == "x000":
        raise ValueError(f"{path!r} has a leading zero group")
    if int(level) > MAX_LEVEL:
        raise ValueError(f"{path!r}: tile levels go up to {MAX_LEVEL}")
    if width is not None and int(width) >= TILE_WIDTH:
        raise ValueError(f"{path!r}: a partial tile has 1 to 255 hashes")
    return int(level), int("".join(p.removeprefix("x") for p in parts)), TILE_WIDTH if width is None else int(width)


def tile_width(size: int, level: int, index: int) -> int:
    """How many hashes tile (level, index) holds in the tree of `size` leaves (0: it does not exist)."""
    nodes = size >> (TILE_HEIGHT * level)
    return max(0, min(TILE_WIDTH, nodes - TILE_WIDTH * index))


def _subtree_root(hashes: bytes) -> bytes:
    """Root over a power of two of consecutive complete subtree roots (packed 32-byte hashes)."""
    sha256 = hashlib.sha256
    while len(hashes) > HASH_BYTES:
        hashes = b"".join([sha256(b"\x01" + hashes[i:i + 64]).digest() for i in range(0, len(hashes), 64)])
    return hashes


@dataclass
class RightEdge:
    """What a log writer keeps to store its tree as tiles: the partial tile of each level.

    `append` takes leaf hashes; `take` gives the tiles to store: every tile that filled up since the
    last `take` (full, immutable) and the partial tile of every level; `requeue` puts back what could
    not be stored."""

    size: int = 0
    partial: list[bytearray] = field(default_factory=lambda: [bytearray()])
    _filled: list[tuple[int, int, bytes]] = field(default_factory=list)

    @classmethod
    def resume(cls, size: int, partials: Mapping[int, bytes]) -> RightEdge:
        """The edge of a stored tree of `size` leaves, from its partial tiles ({level: hashes})."""
        edge = cls(size=size, partial=[])
        level = 0
        while level == 0 or size >> (TILE_HEIGHT * level):
            width = (size >> (TILE_HEIGHT * level)) % TILE_WIDTH
            hashes = partials.get(level, b"")[: width * HASH_BYTES]
            if len(hashes) != width * HASH_BYTES:
                raise ValueError(f"tile level {level} holds {len(hashes) // HASH_BYTES} of the {width} hashes of "
                                 f"a tree of {size}")
            edge.partial.append(bytearray(hashes))
            level += 1
        return edge

    def append(self, leaf: bytes) -> None:
        carried, level = leaf, 0
        while True:
            if level == len(self.partial):
                self.partial.append(bytearray())
            tile = self.partial[level]
            tile += carried
            if len(tile) < FULL_TILE_BYTES:
                break
            index = ((self.size >> (TILE_HEIGHT * level)) >> TILE_HEIGHT)
            self._filled.append((level, index, bytes(tile)))
            carried = _subtree_root(bytes(tile))
            tile.clear()
            level += 1
        self.size += 1

    def take(self) -> list[tuple[int, int, bytes]]:
        """(level, index, hashes) of the tiles filled since the last take, and of every partial tile."""
        filled, self._filled = self._filled, []
        partials = [(level, (self.size >> (TILE_HEIGHT * level)) >> TILE_HEIGHT, bytes(tile))
                    for level, tile in enumerate(self.partial) if tile]
        return [*filled, *partials]

    def requeue(self, taken: list[tuple[int, int, bytes]]) -> None:
        """Put back tiles `take` gave that were not stored (their partial tiles are taken again anyway)."""
        self._filled[:0] = [tile for tile in taken if len(tile[2]) == FULL_TILE_BYTES]


class _TileLevel:
    """Tree level `height` as MerkleTree reads it (len and [index]), computed from tiles."""

    __slots__ = ("hashing", "height", "size", "tile_of")

    def __init__(self, height: int, size: int, tile_of: Callable[[TileKey], bytes], hashing: bool) -> None:
        self.height, self.size, self.tile_of, self.hashing = height, size, tile_of, hashing

    def __len__(self) -> int:
        return self.size >> self.height

    def __getitem__(self, index: int) -> bytes:
        if not 0 <= index < len(self):
            raise IndexError(index)
        level = self.height // TILE_HEIGHT
        span = 1 << (self.height - TILE_HEIGHT * level)
        first = index * span
        tile = self.tile_of((level, first // TILE_WIDTH))
        start = (first % TILE_WIDTH) * HASH_BYTES
        hashes = tile[start:start + span * HASH_BYTES]
        if len(hashes) != span * HASH_BYTES:
            raise LookupError(f"tile {level}/{first // TILE_WIDTH} is too short for a tree of {self.size}")
        return _subtree_root(hashes) if self.hashing else hashes[:HASH_BYTES]


class TiledTree(MerkleTree):
    """keys.merkle.MerkleTree's roots and proofs for a tree of `size` leaves, read from tiles.

    `tile_of((level, index))` returns that tile's hashes (at least as many as the tree needs).
    `tiles_for` says which tiles a computation reads, so that they can be fetched in one go."""

    __slots__ = ()

    def __init__(self, size: int, tile_of: Callable[[TileKey], bytes], *, hashing: bool = True) -> None:
        # hashing=False: every node reads as a stand-in (tiles_for only asks which tiles are read).
        self._levels = [_TileLevel(h, size, tile_of, hashing)  # type: ignore[assignment]
                        for h in range(max(size, 1).bit_length())]

    def append(self, leaf_hash: bytes) -> None:
        raise TypeError("a TiledTree is read-only")

    def leaf(self, index: int) -> bytes:
        """The leaf hash stored for leaf `index`."""
        return self._levels[0][index]

    def compact_range(self) -> CompactRange:
        """The tree as a log writer holds it (keys.merkle.CompactRange), to append to it again."""
        size, start, roots = self.size, 0, []
        while start < size:
            height = (size - start).bit_length() - 1
            roots.append(self._levels[height][start >> height])
            start += 1 << height
        return CompactRange.from_state(size, roots)

    @classmethod
    def tiles_for(cls, size: int, compute: Callable[[TiledTree], object]) -> set[TileKey]:
        """The tiles `compute(tree)` reads in the tree of `size` leaves (run on stand-in hashes, unhashed)."""
        wanted: set[TileKey] = set()

        def record(key: TileKey) -> bytes:
            wanted.add(key)
            return bytes(FULL_TILE_BYTES)

        compute(cls(size, record, hashing=False))
        return wanted
