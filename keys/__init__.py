"""Key material and proofs: API keys, their keyed hashes, sealing at rest, Ed25519 signing keys,
RFC 9162 Merkle trees and C2SP signed notes/checkpoints. Import the submodules directly."""
