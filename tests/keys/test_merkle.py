"""RFC 9162 Merkle trees: published vectors, the RFC's own recursive definitions, and verifier probes."""

from __future__ import annotations

import base64
import time
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from keys.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MerkleTree,
    ProofError,
    leaf_hash,
    node_hash,
    verify_consistency,
    verify_inclusion,
)
from tests import vectors

V = vectors.load("rfc9162-merkle.json")
REF = V["reference_tree"]
REF_LEAVES = [leaf_hash(bytes.fromhex(x)) for x in REF["leaf_inputs_hex"]]
REF_TREE = MerkleTree(REF_LEAVES)
SOME_HASH = bytes.fromhex(V["some_hash_hex"])


def _b64(value: str) -> bytes:
    return base64.b64decode(value)


def _hexes(values: Sequence[str]) -> list[bytes]:
    return [bytes.fromhex(x) for x in values]


def _inclusion_args(case: dict[str, Any]) -> tuple[bytes, int, int, list[bytes], bytes]:
    """A transparency-dev inclusion case as verify_inclusion arguments."""
    proof = [_b64(p) for p in case["proof"]]
    return _b64(case["leafHash"]), case["leafIdx"], case["treeSize"], proof, _b64(case["root"])


def _consistency_args(case: dict[str, Any]) -> tuple[int, int, bytes, bytes, list[bytes]]:
    """A transparency-dev consistency case as verify_consistency arguments."""
    proof = [_b64(p) for p in case["proof"]]
    return case["size1"], case["size2"], _b64(case["root1"]), _b64(case["root2"]), proof


def _leaves(n: int) -> list[bytes]:
    return [leaf_hash(i.to_bytes(8, "big")) for i in range(n)]


# --- RFC 9162 s2.1.1-2.1.4.1 transcribed literally: slow, recursive, obviously right -------------


def _k(n: int) -> int:
    """The largest power of two smaller than n."""
    return 1 << ((n - 1).bit_length() - 1)


def _mth(d: Sequence[bytes]) -> bytes:
    if not d:
        return EMPTY_ROOT
    if len(d) == 1:
        return d[0]
    k = _k(len(d))
    return node_hash(_mth(d[:k]), _mth(d[k:]))


def _rfc_path(m: int, d: Sequence[bytes]) -> list[bytes]:
    if len(d) == 1:
        return []
    k = _k(len(d))
    if m < k:
        return [*_rfc_path(m, d[:k]), _mth(d[k:])]
    return [*_rfc_path(m - k, d[k:]), _mth(d[:k])]


def _rfc_subproof(m: int, d: Sequence[bytes], b: bool) -> list[bytes]:
    if m == len(d):
        return [] if b else [_mth(d)]
    k = _k(len(d))
    if m <= k:
        return [*_rfc_subproof(m, d[:k], b), _mth(d[k:])]
    return [*_rfc_subproof(m - k, d[k:], False), _mth(d[:k])]


# --- transparency-dev/merkle verifier probes: each variant of a valid proof must be rejected -------


def _node_corruptions(proof: list[bytes], extra: Sequence[bytes]) -> Iterator[tuple[str, list[bytes]]]:
    for garbage in (*extra, SOME_HASH, b""):
        yield "garbage appended", [*proof, garbage]
        yield "garbage prepended", [garbage, *proof]
    for i in range(len(proof)):
        for bit in (3, 128, 255):  # one bit of each node at a time: first, middle and last byte
            flipped = bytearray(proof[i])
            flipped[bit // 8] ^= 1 << (bit % 8)
            yield f"node {i} bit {bit} flipped", [*proof[:i], bytes(flipped), *proof[i + 1 :]]
        yield f"node {i} removed", proof[:i] + proof[i + 1 :]
    for i in range(len(proof) + 1):
        yield f"node inserted at {i}", [*proof[:i], SOME_HASH, *proof[i:]]
    if proof:
        yield "empty proof", []


def _inclusion_probes(leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes) -> Iterator[Any]:
    original = (leaf, index, size, proof, root)
    probes = [
        ("index - 1", (leaf, index - 1, size, proof, root)),
        ("index + 1", (leaf, index + 1, size, proof, root)),
        ("index ^ 2", (leaf, index ^ 2, size, proof, root)),
        ("size * 2", (leaf, index, size * 2, proof, root)),
        ("size // 2", (leaf, index, size // 2, proof, root)),
        ("wrong leaf", (leaf_hash(b"WrongLeaf"), index, size, proof, root)),
        ("empty tree root", (leaf, index, size, proof, EMPTY_ROOT)),
        ("empty root", (leaf, index, size, proof, b"")),
        ("random root", (leaf, index, size, proof, SOME_HASH)),
    ]
    probes += [(name, (leaf, index, size, bad, root)) for name, bad in _node_corruptions(proof, [leaf, root])]
    for name, args in probes:
        if args != original:
            yield pytest.param(*args, id=name)


def _consistency_probes(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> Iterator[Any]:
    original = (size1, size2, root1, root2, proof)
    probes = [
        ("size1 - 1", (size1 - 1, size2, root1, root2, proof)),
        ("size1 + 1", (size1 + 1, size2, root1, root2, proof)),
        ("size1 ^ 2", (size1 ^ 2, size2, root1, root2, proof)),
        ("size2 * 2", (size1, size2 * 2, root1, root2, proof)),
        ("size2 // 2", (size1, size2 // 2, root1, root2, proof)),
        ("roots swapped", (size1, size2, root2, root1, proof)),
        ("random root1", (size1, size2, SOME_HASH, root2, proof)),
        ("random root2", (size1, size2, root1, SOME_HASH, proof)),
        ("empty tree root1", (size1, size2, EMPTY_ROOT, root2, proof)),
        ("empty root2", (size1, size2, root1, b"", proof)),
        ("truncated proof", (size1, size2, root1, root2, proof[:-1])),
    ]
    if proof:
        probes.append(("proof[0] repeated in front", (size1, size2, root1, root2, [proof[0], *proof])))
    corruptions = _node_corruptions(proof, [root1, root2])
    probes += [(name, (size1, size2, root1, root2, bad)) for name, bad in corruptions]
    for name, args in probes:
        if args != original:
            yield pytest.param(*args, id=name)


def _assert_inclusion_probes_fail(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    for probe in _inclusion_probes(leaf, index, size, proof, root):
        with pytest.raises(ProofError):
            verify_inclusion(*probe.values)


def _assert_consistency_probes_fail(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    for probe in _consistency_probes(size1, size2, root1, root2, proof):
        with pytest.raises(ProofError):
            verify_consistency(*probe.values)


# --- vectors ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", V["hasher_known_answers"], ids=lambda c: c["name"])
def test_hasher_known_answers(case: dict[str, str]) -> None:
    if case["function"] == "empty_root":
        got = EMPTY_ROOT
    elif case["function"] == "leaf_hash":
        got = leaf_hash(bytes.fromhex(case["input_hex"]))
    else:
        got = node_hash(bytes.fromhex(case["left_hex"]), bytes.fromhex(case["right_hex"]))
    assert got.hex() == case["want_hex"]


@pytest.mark.parametrize("n", range(9))
def test_reference_tree_roots(n: int) -> None:
    want = bytes.fromhex(REF["root_hashes_hex"][n])
    compact = CompactRange()
    for leaf in REF_LEAVES[:n]:
        compact.append(leaf)
    assert REF_TREE.root(n) == MerkleTree(REF_LEAVES[:n]).root() == compact.root() == want
    assert _mth(REF_LEAVES[:n]) == want


def test_reference_tree_node_hashes() -> None:
    for height, hashes in enumerate(REF["node_hashes_hex"]):
        for j, want in enumerate(hashes):
            assert MerkleTree(REF_LEAVES[j << height : (j + 1) << height]).root().hex() == want


@pytest.mark.parametrize("n", range(9))
def test_compact_range_state_is_the_complete_subtrees_left_to_right(n: int) -> None:
    compact = CompactRange()
    for leaf in REF_LEAVES[:n]:
        compact.append(leaf)
    want, start = [], 0
    for height in reversed(range(4)):
        if n >> height & 1:
            want.append(bytes.fromhex(REF["node_hashes_hex"][height][start >> height]))
            start += 1 << height
    assert compact.state() == (n, want)


@pytest.mark.parametrize("case", V["inclusion_vectors"], ids=lambda c: f"{c['leaf_index']}/{c['tree_size']}")
def test_inclusion_vectors(case: dict[str, Any]) -> None:
    index, size, proof = case["leaf_index"], case["tree_size"], _hexes(case["proof_hex"])
    root = bytes.fromhex(REF["root_hashes_hex"][size])
    assert REF_TREE.inclusion_proof(index, size) == proof
    verify_inclusion(REF_LEAVES[index], index, size, proof, root)
    _assert_inclusion_probes_fail(REF_LEAVES[index], index, size, proof, root)


@pytest.mark.parametrize("case", V["consistency_vectors"], ids=lambda c: f"{c['size1']}-to-{c['size2']}")
def test_consistency_vectors(case: dict[str, Any]) -> None:
    size1, size2, proof = case["size1"], case["size2"], _hexes(case["proof_hex"])
    root1, root2 = (bytes.fromhex(REF["root_hashes_hex"][n]) for n in (size1, size2))
    assert REF_TREE.consistency_proof(size1, size2) == proof
    verify_consistency(size1, size2, root1, root2, proof)
    _assert_consistency_probes_fail(size1, size2, root1, root2, proof)


@pytest.mark.parametrize("case", V["inclusion_happy_paths"], ids=lambda c: c["name"])
def test_inclusion_happy_paths(case: dict[str, Any]) -> None:
    leaf, index, size, proof, root = _inclusion_args(case)
    assert case["wantErr"] is False
    assert REF_TREE.inclusion_proof(index, size) == proof
    verify_inclusion(leaf, index, size, proof, root)


@pytest.mark.parametrize(
    "leaf,index,size,proof,root",
    [probe for case in V["inclusion_happy_paths"] for probe in _inclusion_probes(*_inclusion_args(case))],
)
def test_inclusion_happy_path_probes_fail(
    leaf: bytes, index: int, size: int, proof: list[bytes], root: bytes
) -> None:
    with pytest.raises(ProofError):
        verify_inclusion(leaf, index, size, proof, root)


@pytest.mark.parametrize("case", V["consistency_happy_paths"], ids=lambda c: c["name"])
def test_consistency_happy_paths(case: dict[str, Any]) -> None:
    size1, size2, root1, root2, proof = _consistency_args(case)
    assert case["wantErr"] is False
    assert REF_TREE.consistency_proof(size1, size2) == proof
    verify_consistency(size1, size2, root1, root2, proof)


@pytest.mark.parametrize(
    "size1,size2,root1,root2,proof",
    [
        probe
        for case in V["consistency_happy_paths"]
        for probe in _consistency_probes(*_consistency_args(case))
    ],
)
def test_consistency_happy_path_probes_fail(
    size1: int, size2: int, root1: bytes, root2: bytes, proof: list[bytes]
) -> None:
    with pytest.raises(ProofError):
        verify_consistency(size1, size2, root1, root2, proof)


@pytest.mark.parametrize("case", V["inclusion_static_probes"], ids=lambda c: c["name"])
def test_inclusion_static_probes(case: dict[str, Any]) -> None:
    args = _inclusion_args(case)
    if case["expect"] == "accept":
        verify_inclusion(*args)
    else:
        with pytest.raises(ProofError):
            verify_inclusion(*args)


@pytest.mark.parametrize("case", V["consistency_static_probes"], ids=lambda c: c["name"])
def test_consistency_static_probes(case: dict[str, Any]) -> None:
    args = _consistency_args(case)
    if case["expect"] == "accept":
        verify_consistency(*args)
    else:
        with pytest.raises(ProofError):
            verify_consistency(*args)


def test_equal_sizes_with_equal_32_byte_roots_and_no_proof_are_consistent() -> None:
    # The counterpart the vectors' note asks for: the upstream-accepted case with real 32-byte roots.
    verify_consistency(1, 1, REF_LEAVES[0], REF_LEAVES[0], [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError):
        verify_consistency(0, 0, SOME_HASH, SOME_HASH, [])


def test_rejections_name_the_failed_rfc_step() -> None:
    # The RFC's length checks fail fast, before a wrong-length proof reaches the root comparison.
    root8 = REF_TREE.root()
    inclusion = REF_TREE.inclusion_proof(5, 8)
    with pytest.raises(ProofError, match="too many nodes"):
        verify_inclusion(REF_LEAVES[5], 5, 8, [*inclusion, SOME_HASH], root8)
    with pytest.raises(ProofError, match="too few nodes"):
        verify_inclusion(REF_LEAVES[5], 5, 8, inclusion[:-1], root8)
    with pytest.raises(ProofError, match="not below the tree size"):
        verify_inclusion(REF_LEAVES[5], 8, 8, inclusion, root8)
    consistency = REF_TREE.consistency_proof(6, 8)
    with pytest.raises(ProofError, match="too many nodes"):
        verify_consistency(6, 8, REF_TREE.root(6), root8, [*consistency, SOME_HASH])
    with pytest.raises(ProofError, match="too few nodes"):
        verify_consistency(6, 8, REF_TREE.root(6), root8, consistency[:-1])
    with pytest.raises(ProofError, match="old root"):
        verify_consistency(6, 8, SOME_HASH, root8, consistency)


def test_go_record_hash_is_the_leaf_hash() -> None:
    case = V["go_record_hash"]
    assert leaf_hash(bytes.fromhex(case["input_hex"])) == _b64(case["leaf_hash_b64"])


def test_rfc9162_worked_example() -> None:
    example = V["rfc9162_example"]
    leaves = REF_LEAVES[: example["tree_size"]]
    named: dict[str, bytes] = {}

    def resolve(name: str) -> bytes:
        if name not in named:
            spec = example["nodes"][name]
            if "leaf" in spec:
                named[name] = leaves[spec["leaf"]]
            else:
                named[name] = node_hash(resolve(spec["left"]), resolve(spec["right"]))
        return named[name]

    tree = MerkleTree(leaves)
    assert tree.root() == resolve("hash")
    for case in example["inclusion_proofs"]:
        proof = [resolve(name) for name in case["proof"]]
        assert tree.inclusion_proof(case["leaf_index"], 7) == proof
        verify_inclusion(leaves[case["leaf_index"]], case["leaf_index"], 7, proof, resolve("hash"))
    for case in example["consistency_proofs"]:
        proof = [resolve(name) for name in case["proof"]]
        assert tree.root(case["size1"]) == resolve(case["root1"])
        assert tree.consistency_proof(case["size1"], 7) == proof
        verify_consistency(case["size1"], 7, resolve(case["root1"]), resolve("hash"), proof)


# --- properties --------------------------------------------------------------------------------------


def test_every_proof_of_small_trees_matches_the_rfc_definitions_and_verifies() -> None:
    leaves = _leaves(33)
    tree = MerkleTree(leaves)
    for size in range(1, len(leaves) + 1):
        root = tree.root(size)
        assert root == _mth(leaves[:size])
        for index in range(size):
            proof = tree.inclusion_proof(index, size)
            assert proof == _rfc_path(index, leaves[:size])
            verify_inclusion(leaves[index], index, size, proof, root)
        for old in range(1, size + 1):
            proof = tree.consistency_proof(old, size)
            assert proof == _rfc_subproof(old, leaves[:size], True)
            verify_consistency(old, size, tree.root(old), root, proof)


@given(st.integers(1, 600).flatmap(lambda n: st.tuples(st.just(n), st.integers(1, n), st.integers(0, n - 1))))
def test_proofs_of_random_trees_verify_and_their_probes_fail(case: tuple[int, int, int]) -> None:
    n, size, index_seed = case
    leaves = _leaves(n)
    tree = MerkleTree(leaves)
    index = index_seed % size
    proof = tree.inclusion_proof(index, size)
    verify_inclusion(leaves[index], index, size, proof, tree.root(size))
    _assert_inclusion_probes_fail(leaves[index], index, size, proof, tree.root(size))
    old = index + 1
    proof = tree.consistency_proof(old, size)
    verify_consistency(old, size, tree.root(old), tree.root(size), proof)
    _assert_consistency_probes_fail(old, size, tree.root(old), tree.root(size), proof)


def test_compact_range_and_appended_tree_agree_with_the_built_tree_at_every_size() -> None:
    leaves = _leaves(300)
    built = MerkleTree(leaves)
    appended = MerkleTree()
    compact = CompactRange()
    assert compact.root() == appended.root() == EMPTY_ROOT
    for size, leaf in enumerate(leaves, start=1):
        compact.append(leaf)
        appended.append(leaf)
        assert compact.size == appended.size == size
        assert compact.root() == appended.root() == built.root(size)
        assert appended.inclusion_proof(size - 1, size) == built.inclusion_proof(size - 1, size)
        assert appended.consistency_proof(1, size) == built.consistency_proof(1, size)


@given(st.integers(0, 2000), st.integers(0, 40))
def test_compact_range_resumes_from_its_state(size: int, more: int) -> None:
    leaves = _leaves(size + more)
    before = CompactRange()
    for leaf in leaves[:size]:
        before.append(leaf)
    resumed = CompactRange.from_state(*before.state())
    for leaf in leaves[size:]:
        resumed.append(leaf)
    assert resumed.size == size + more
    assert resumed.root() == MerkleTree(leaves).root()


def test_compact_range_state_is_checked() -> None:
    with pytest.raises(ValueError):
        CompactRange.from_state(3, [SOME_HASH])  # 3 = 0b11 needs two subtree roots
    with pytest.raises(ValueError):
        CompactRange.from_state(1, [b"short"])
    with pytest.raises(ValueError):
        CompactRange.from_state(-1, [])
    with pytest.raises(ValueError):
        CompactRange().append(b"short")


def test_tree_rejects_impossible_requests() -> None:
    with pytest.raises(ValueError):
        MerkleTree([b"short"])
    with pytest.raises(ValueError):
        REF_TREE.root(9)
    with pytest.raises(ValueError):
        REF_TREE.inclusion_proof(3, 3)
    with pytest.raises(ValueError):
        REF_TREE.inclusion_proof(0, 9)
    with pytest.raises(ValueError):
        REF_TREE.consistency_proof(0, 4)
    with pytest.raises(ValueError):
        REF_TREE.consistency_proof(5, 4)
    assert REF_TREE.consistency_proof(4, 4) == []


def test_a_million_leaves_build_once_and_prove_in_logarithmic_time() -> None:
    size = (1 << 20) + 3
    leaves = _leaves(size)
    tree = MerkleTree(leaves)
    assert tree.root() == _mth_fast(leaves)
    start = time.perf_counter()
    for index in range(0, size, 997):  # ~1000 proofs of each kind, at the latest and an older size
        proof = tree.inclusion_proof(index, size)
        verify_inclusion(leaves[index], index, size, proof, tree.root())
        old, new = index + 1, size - 2
        verify_consistency(old, new, tree.root(old), tree.root(new), tree.consistency_proof(old, new))
    # O(log n) each: well under a second; O(n) each would take hours.
    assert time.perf_counter() - start < 5


def _mth_fast(leaves: Sequence[bytes]) -> bytes:
    compact = CompactRange()
    for leaf in leaves:
        compact.append(leaf)
    return compact.root()
