"""RFC 9162 Merkle trees over SHA-256: hashing, the log writer's compact range, proofs, verification.

A complete subtree of 2**h leaves starting at leaf j * 2**h is addressed as (height h, index j);
its root never changes once its last leaf exists, which is why the tree can store it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_BYTES = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()


class ProofError(ValueError):
    """A proof does not prove what it claims; `reason` says which check failed."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def leaf_hash(entry: bytes) -> bytes:
    return hashlib.sha256(b"\x00" + entry).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class CompactRange:
    """The roots of the complete subtrees covering all leaves, left to right: O(log n) hashes.

    This is all a log writer needs in memory to append and to compute each new root.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_state(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Resume from `state()`: one root per set bit of `size`, the largest subtree first."""
        if size < 0 or len(hashes) != size.bit_count():
            raise ValueError("a compact range of size n holds one hash per set bit of n")
        _check_hashes(hashes)
        compact = cls()
        compact._size = size
        compact._hashes = list(hashes)
        return compact

    def state(self) -> tuple[int, list[bytes]]:
        return self._size, list(self._hashes)

    @property
    def size(self) -> int:
        return self._size

    def append(self, leaf_hash: bytes) -> None:
        _check_hashes([leaf_hash])
        carried = leaf_hash
        # Each trailing 1 bit of the old size is a subtree as tall as the one being carried: merge.
        size = self._size
        while size & 1:
            carried = node_hash(self._hashes.pop(), carried)
            size >>= 1
        self._hashes.append(carried)
        self._size += 1

    def root(self) -> bytes:
        return _fold(self._hashes) if self._hashes else EMPTY_ROOT


class MerkleTree:
    """All complete subtree roots, level by level, so roots and proofs of any past size cost O(log n)."""

    __slots__ = ("_levels",)

    def __init__(self, leaf_hashes: Sequence[bytes] = ()) -> None:
        leaves = list(leaf_hashes)
        _check_hashes(leaves)
        # _levels[h][j] is the root of complete subtree (h, j); level h holds size >> h of them.
        self._levels: list[list[bytes]] = [leaves]
        level = leaves
        while len(level) > 1:
            level = [node_hash(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            self._levels.append(level)

    @property
    def size(self) -> int:
        return len(self._levels[0])

    def append(self, leaf_hash: bytes) -> None:
        _check_hashes([leaf_hash])
        self._levels[0].append(leaf_hash)
        height = 0
        # An even count means the newest subtree at this height just got its right half.
        while len(self._levels[height]) % 2 == 0:
            level = self._levels[height]
            if height + 1 == len(self._levels):
                self._levels.append([])
            self._levels[height + 1].append(node_hash(level[-2], level[-1]))
            height += 1

    def root(self, size: int | None = None) -> bytes:
        """Root of the tree of the first `size` leaves (default: all)."""
        if size is None:
            size = self.size
        if not 0 <= size <= self.size:
            raise ValueError(f"tree size {size} is outside 0..{self.size}")
        return self._range_root(0, size) if size else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[0:size]), leaf level first."""
        if not 0 <= index < size <= self.size:
            raise ValueError(f"need 0 <= index {index} < size {size} <= {self.size}")
        return self._path(index, 0, size)

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        """RFC 9162 PROOF(old_size, D[0:new_size]); empty when the sizes are equal."""
        if not 0 < old_size <= new_size <= self.size:
            raise ValueError(f"need 0 < old size {old_size} <= new size {new_size} <= {self.size}")
        if old_size == new_size:
            return []
        # The smallest complete subtree of the old tree ends at old_size; prove it in the new tree.
        height = (old_size & -old_size).bit_length() - 1
        index = (old_size >> height) - 1
        proof = self._path(index, height, new_size)
        # When old_size is a power of 2 that subtree is the old root, which the verifier holds.
        return proof if index == 0 else [self._levels[height][index], *proof]

    def _path(self, index: int, height: int, size: int) -> list[bytes]:
        """Audit path of complete subtree (height, index) in the tree of the first `size` leaves."""
        last = (size - 1) >> height
        # Below `inner`, the node and the tree's last leaf are in different subtrees, so a sibling
        # exists at every step; above it the path follows the right edge, with left siblings only.
        inner = (index ^ last).bit_length()
        proof = []
        for step in range(inner):
            level = height + step
            sibling = (index >> step) ^ 1
            start = sibling << level
            if start + (1 << level) <= size:
                proof.append(self._levels[level][sibling])
            else:
                # A right sibling cut short by the tree's edge is not stored: hash its O(log n) parts.
                proof.append(self._range_root(start, size))
        for step in range(inner, index.bit_length()):
            if (index >> step) & 1:
                proof.append(self._levels[height + step][(index >> step) ^ 1])
        return proof

    def _range_root(self, start: int, end: int) -> bytes:
        """Root of leaves [start, end); start must be a multiple of the largest power of 2 <= end - start."""
        subtrees = []
        while start < end:
            height = (end - start).bit_length() - 1
            subtrees.append(self._levels[height][start >> height])
            start += 1 << height
        return _fold(subtrees)


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """RFC 9162 s2.1.3.2: raise ProofError unless `proof` shows leaf `index` is in the tree `root`."""
    if any(len(h) != HASH_BYTES for h in (leaf_hash, root, *proof)):
        raise ProofError(f"every hash must be {HASH_BYTES} bytes")
    if not 0 <= index < size:
        raise ProofError("leaf index is not below the tree size")
    fn, sn = index, size - 1
    r = leaf_hash
    for p in proof:
        if sn == 0:
            raise ProofError("proof has too many nodes")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("proof has too few nodes")
    if r != root:
        raise ProofError("computed root does not match")


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """RFC 9162 s2.1.4.2: raise ProofError unless `proof` shows the old tree is a prefix of the new."""
    if any(len(h) != HASH_BYTES for h in (old_root, new_root, *proof)):
        raise ProofError(f"every hash must be {HASH_BYTES} bytes")
    if not 0 <= old_size <= new_size:
        raise ProofError("need 0 <= old size <= new size")
    if old_size == new_size:
        # Outside the RFC's 0 < first < second: the only valid proof is none, with equal roots.
        if proof:
            raise ProofError("proof between equal sizes must be empty")
        if old_root != new_root:
            raise ProofError("roots differ for the same size")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("the empty tree has another root")
        return
    if old_size == 0:
        # Every tree extends the empty one; a "proof" of that proves nothing, so none is accepted.
        raise ProofError("consistency with the empty tree cannot be proven")
    if not proof:
        raise ProofError("proof is empty")
    path = list(proof)
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("proof has too many nodes")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while fn and not fn & 1:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError("proof has too few nodes")
    if fr != old_root:
        raise ProofError("computed old root does not match")
    if sr != new_root:
        raise ProofError("computed new root does not match")


def _fold(subtrees: Sequence[bytes]) -> bytes:
    """Root over complete subtree roots, largest first: RFC 9162 splits off the left subtree each time."""
    root = subtrees[-1]
    for left in reversed(subtrees[:-1]):
        root = node_hash(left, root)
    return root


def _check_hashes(hashes: Sequence[bytes]) -> None:
    if any(len(h) != HASH_BYTES for h in hashes):
        raise ValueError(f"a leaf or node hash has {HASH_BYTES} bytes")
