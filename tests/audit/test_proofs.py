"""The verifier's cached inclusion check accepts exactly what RFC 9162 verification accepts.

Probes as transparency-dev/merkle's: index +-1, size changes, wrong leaf, wrong root, garbage nodes
appended or prepended, each node flipped, a node removed or inserted, the empty proof; run both on a
cold cache and on one warmed by every correct proof of the tree.
"""

from __future__ import annotations

import base64
import hashlib

import pytest

from gateway.audit.verify import _ProofCache
from keys.merkle import MerkleTree, ProofError, leaf_hash, verify_inclusion

SIZES = [1, 2, 3, 5, 8, 13, 64, 100]


def leaves(n: int) -> list[bytes]:
    return [leaf_hash(f"entry {i}".encode()) for i in range(n)]


def b64(proof: list[bytes]) -> list[str]:
    return [base64.b64encode(h).decode() for h in proof]


def warmed(tree: MerkleTree, size: int, hashes: list[bytes]) -> _ProofCache:
    cache = _ProofCache(size, tree.root(size))
    for index in range(size):
        cache.verify(hashes[index], index, b64(tree.inclusion_proof(index, size)))
    return cache


@pytest.mark.parametrize("n", SIZES)
def test_every_correct_proof_verifies_in_any_order(n: int) -> None:
    hashes = leaves(n)
    tree = MerkleTree(hashes)
    for size in range(1, n + 1):
        warmed(tree, size, hashes)
        cache = _ProofCache(size, tree.root(size))
        for index in reversed(range(size)):
            cache.verify(hashes[index], index, b64(tree.inclusion_proof(index, size)))


def probes(tree: MerkleTree, hashes: list[bytes], index: int, size: int):  # type: ignore[no-untyped-def]
    proof = tree.inclusion_proof(index, size)
    junk = hashlib.sha256(b"junk").digest()
    yield "index + 1", hashes[index], index + 1, proof
    yield "index - 1", hashes[index], index - 1, proof
    yield "wrong leaf", junk, index, proof
    yield "garbage appended", hashes[index], index, [*proof, junk]
    yield "garbage prepended", hashes[index], index, [junk, *proof]
    yield "empty proof", hashes[index], index, [] if proof else [junk]
    for k in range(len(proof)):
        flipped = bytearray(proof[k])
        flipped[k % 32] ^= 1
        yield f"node {k} flipped", hashes[index], index, [*proof[:k], bytes(flipped), *proof[k + 1:]]
        yield f"node {k} removed", hashes[index], index, proof[:k] + proof[k + 1:]
        yield f"node inserted at {k}", hashes[index], index, [*proof[:k], junk, *proof[k:]]


@pytest.mark.parametrize("n", SIZES)
def test_every_probe_fails_on_a_cold_and_on_a_warm_cache(n: int) -> None:
    hashes = leaves(n)
    tree = MerkleTree(hashes)
    for size in range(1, n + 1):
        warm = warmed(tree, size, hashes)
        for index in range(size):
            for name, leaf, at, proof in probes(tree, hashes, index, size):
                with pytest.raises(ProofError):
                    verify_inclusion(leaf, at, size, proof, tree.root(size))  # the reference agrees
                for cache in (_ProofCache(size, tree.root(size)), warm):
                    with pytest.raises(ProofError):
                        cache.verify(leaf, at, b64(proof))
                        pytest.fail(f"size {size} index {index}: {name} accepted")


@pytest.mark.parametrize("n", SIZES)
def test_a_proof_is_judged_the_same_after_a_proof_of_any_other_leaf(n: int) -> None:
    """The cache starts from the last proof it accepted, which joins a new one at some level: whatever
    that level, every probe fails, a correct proof passes, and a failure leaves the cache usable."""
    hashes = leaves(n)
    tree = MerkleTree(hashes)
    for size in range(1, n + 1) if n <= 13 else [n]:
        root = tree.root(size)
        for index in range(size):
            correct = b64(tree.inclusion_proof(index, size))
            lasts = range(size) if n <= 13 else {0, index - 1, index + 1, size - 1} & set(range(size))
            for last in lasts:
                cache = _ProofCache(size, root)
                cache.verify(hashes[last], last, b64(tree.inclusion_proof(last, size)))
                cache.verify(hashes[index], index, correct)
                for name, leaf, at, proof in probes(tree, hashes, index, size):
                    cache.verify(hashes[last], last, b64(tree.inclusion_proof(last, size)))
                    with pytest.raises(ProofError):
                        cache.verify(leaf, at, b64(proof))
                        pytest.fail(f"size {size} index {index} after {last}: {name} accepted")
                    cache.verify(hashes[index], index, correct)
