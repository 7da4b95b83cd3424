"""Hash tiles (keys/tiles.py): stored as they grow, they prove exactly what the whole tree proves."""

from __future__ import annotations

import random

import pytest

from keys.merkle import MerkleTree, leaf_hash
from keys.tiles import FULL_TILE_BYTES, RightEdge, TiledTree, parse_tile_path, tile_path, tile_width

# Either side of a tile filling up at level 0 and at level 1 (256 and 65,536 leaves).
SIZES = [1, 2, 3, 255, 256, 257, 511, 512, 513, 65_535, 65_536, 65_537, 70_001]


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def _grown(leaves: list[bytes], stores: set[int]) -> dict[tuple[int, int], bytes]:
    """Tiles as a writer stores them: appended leaf by leaf, taken at each size in `stores`; each
    stored tile only ever grows."""
    edge, tiles = RightEdge(), {}
    for count, leaf in enumerate(leaves, 1):
        edge.append(leaf)
        if count in stores or count == len(leaves):
            for level, index, hashes in edge.take():
                assert hashes.startswith(tiles.get((level, index), b"")), "a stored tile changed"
                tiles[level, index] = hashes
    return tiles


@pytest.mark.parametrize("n", SIZES)
def test_tiles_prove_what_the_tree_proves_at_every_stored_size(n: int) -> None:
    leaves, rng = _leaves(n), random.Random(n)
    stores = {rng.randrange(1, n + 1) for _ in range(3)}
    tiles = _grown(leaves, stores)
    tree = MerkleTree(leaves)
    for size in sorted(stores | {n}):
        tiled = TiledTree(size, tiles.__getitem__)
        assert tiled.root() == tree.root(size)
        for index in {0, size - 1, rng.randrange(size), rng.randrange(size)}:
            assert tiled.inclusion_proof(index, size) == tree.inclusion_proof(index, size)
            assert tiled.leaf(index) == leaves[index]
        old = rng.randrange(1, size + 1)
        assert tiled.consistency_proof(old, size) == tree.consistency_proof(old, size)


@pytest.mark.parametrize("n", SIZES)
def test_a_proof_reads_at_most_two_tiles_per_tile_level(n: int) -> None:
    tiles = _grown(_leaves(n), set())
    for index in {0, n // 2, n - 1}:
        wanted = TiledTree.tiles_for(n, lambda tree, index=index: (tree.inclusion_proof(index, n), tree.root()))
        assert wanted <= tiles.keys()
        levels = [level for level, _ in wanted]
        assert all(levels.count(level) <= 2 for level in levels), sorted(wanted)


@pytest.mark.parametrize("n", [1, 255, 256, 65_537])
def test_the_stored_tiles_are_exactly_the_tiles_of_the_tree(n: int) -> None:
    tiles = _grown(_leaves(n), set())
    for (level, index), hashes in tiles.items():
        assert len(hashes) == 32 * tile_width(n, level, index) > 0
    assert sum(len(h) for (level, _), h in tiles.items() if level == 0) == 32 * n
    assert all(len(h) == FULL_TILE_BYTES for (level, index), h in tiles.items()
               if (index + 1) * 256 <= n >> (8 * level))


def test_an_edge_resumes_from_its_stored_partial_tiles() -> None:
    leaves = _leaves(70_001)
    edge = RightEdge()
    for leaf in leaves[:66_000]:
        edge.append(leaf)
    tiles = {(level, index): hashes for level, index, hashes in edge.take()}
    partials = {level: tiles.get((level, 66_000 >> (8 * (level + 1))), b"") for level in range(3)}
    resumed = RightEdge.resume(66_000, partials)
    for leaf in leaves[66_000:]:
        resumed.append(leaf)
    tiles.update({(level, index): hashes for level, index, hashes in resumed.take()})
    assert TiledTree(70_001, tiles.__getitem__).root() == MerkleTree(leaves).root()
    with pytest.raises(ValueError, match="holds 0 of the"):
        RightEdge.resume(66_000, {})


@pytest.mark.parametrize(("path", "tile"), [
    ("tile/0/000", (0, 0, 256)), ("tile/0/x001/x234/067", (0, 1_234_067, 256)), ("tile/1/005.p/7", (1, 5, 7)),
    ("tile/2/999.p/255", (2, 999, 255)), ("tile/0/x001/000", (0, 1000, 256)),
])
def test_tile_paths_are_spelt_as_tlog_tiles_says(path: str, tile: tuple[int, int, int]) -> None:
    assert tile_path(*tile) == path
    assert parse_tile_path(path) == tile


@pytest.mark.parametrize("path", [
    "tile/0/1", "tile/0/0001", "tile/00/000", "tile/0/x000/001", "tile/0/000.p/0", "tile/0/000.p/256",
    "tile/0/000.p/01", "tile/0/000/", "tile/entries/000", "tile/0/x1/000", "/tile/0/000", "tile/64/000",
])
def test_other_spellings_of_a_tile_path_are_refused(path: str) -> None:
    with pytest.raises(ValueError):
        parse_tile_path(path)


@pytest.mark.parametrize("n", [1, 2, 255, 256, 257, 65_537])
def test_a_writer_resumes_its_compact_range_from_tiles(n: int) -> None:
    leaves = _leaves(n + 3)
    tiles = _grown(leaves[:n], set())
    resumed = TiledTree(n, tiles.__getitem__).compact_range()
    for leaf in leaves[n:]:
        resumed.append(leaf)
    assert resumed.size == n + 3 and resumed.root() == MerkleTree(leaves).root()
