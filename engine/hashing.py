"""Chained block hashes: the one scheme every process (and any language) computes alike.

For a sequence split into full blocks of `block_size` tokens:

    h_0 = H(SEED, tokens[0:B], extra)
    h_i = H(h_{i-1}, tokens[i*B:(i+1)*B], extra)

    H(parent, tokens, extra) = first 8 bytes, little-endian, of
        sha256( parent as 8 bytes little-endian
              || each token id as 4 bytes little-endian (unsigned)
              || extra )

    SEED = 0x74616e64656d2d31  (the ASCII bytes "tandem-1")

A hash therefore names a block *and* everything before it: two workers holding a block
with the same hash hold the same prefix. `extra` salts the chain for things that change
the KV without changing tokens (a LoRA adapter, a multimodal input); it is b"" by default.
Only full blocks are hashed: a partial block is never shared.

A cache salt (a request's `cache_salt`, as vLLM's) replaces SEED for that request's chain:

    salted_seed(salt) = H(SEED, no tokens, b"cache_salt:" || salt as UTF-8)   (SEED for "")

so its blocks share a prefix only with requests of the same salt: a tenant cannot learn
from another's cache hits (their timing, their routing) what that tenant sent.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Sequence

SEED = int.from_bytes(b"tandem-1", "big")
_U64 = struct.Struct("<Q")


def hash_block(parent: int, tokens: Sequence[int], extra: bytes = b"") -> int:
    """One link of the chain; `parent` is SEED for the first block."""
    return _link(parent, _packed(tokens), extra)


def _packed(tokens: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32s, the chain's byte encoding of a block."""
    return struct.pack(f"<{len(tokens)}I", *tokens)


def _link(parent: int, packed: bytes | memoryview, extra: bytes) -> int:
    h = hashlib.sha256(_U64.pack(parent))
    h.update(packed)
    if extra:
        h.update(extra)
    return _U64.unpack(h.digest()[:8])[0]


def salted_seed(salt: str) -> int:
    """The parent of a request's first block: SEED, or SEED salted with `salt`."""
    return hash_block(SEED, (), b"cache_salt:" + salt.encode()) if salt else SEED


def chain_hashes(
    tokens: Sequence[int],
    block_size: int,
    extra: bytes = b"",
    parent: int = SEED,
    start_block: int = 0,
) -> list[int]:
    """Hashes of every full block of `tokens` from `start_block` on.

    `parent` must be the hash of block `start_block - 1` (SEED when starting at 0), which
    lets a caller extend a chain as a sequence grows without rehashing its prefix.
    """
    end_block = len(tokens) // block_size
    # Packed once for all blocks, then read block by block: packing a block at a time cost
    # a 4k-token prompt's hashing ~0.1 ms of its 0.33 (the router hashes every prompt).
    packed = memoryview(_packed(tokens[start_block * block_size : end_block * block_size]))
    step = 4 * block_size
    out: list[int] = []
    for at in range(0, len(packed), step):
        parent = _link(parent, packed[at : at + step], extra)
        out.append(parent)
    return out
