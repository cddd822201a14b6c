"""Chained block hashes: checked against an independent re-implementation of the
documented formula (hashlib + int.to_bytes, not the module's struct code)."""

from __future__ import annotations

import hashlib
import struct

import pytest

from engine.hashing import SEED, chain_hashes, hash_block, salted_seed

# Pinned once from the documented definition (see `_ref_hash`), for tokens 1..8, B=4.
PINNED_TOKENS = [1, 2, 3, 4, 5, 6, 7, 8]
PINNED_HASHES = [0x6666A075751E4745, 0x39424DE1BDAE6CC9]
# The ASCII bytes "tandem-1" read big-endian.
SEED_BY_HAND = 0x74616E64656D2D31


def _ref_hash(parent: int, tokens: list[int], extra: bytes = b"") -> int:
    """H(parent, tokens, extra) exactly as the module docstring defines it."""
    data = parent.to_bytes(8, "little")
    data += b"".join(t.to_bytes(4, "little", signed=False) for t in tokens)
    data += extra
    return int.from_bytes(hashlib.sha256(data).digest()[:8], "little")


def _ref_chain(tokens: list[int], block_size: int, extra: bytes = b"") -> list[int]:
    out: list[int] = []
    parent = SEED_BY_HAND
    for i in range(len(tokens) // block_size):
        parent = _ref_hash(parent, tokens[i * block_size : (i + 1) * block_size], extra)
        out.append(parent)
    return out


def test_seed_is_ascii_tandem_1_big_endian() -> None:
    assert SEED == SEED_BY_HAND
    assert SEED.to_bytes(8, "big") == b"tandem-1"
    assert struct.pack(">Q", SEED) == b"tandem-1"


def test_pinned_reference_value() -> None:
    # The reference implementation reproduces the pinned constants ...
    assert _ref_chain(PINNED_TOKENS, 4) == PINNED_HASHES
    # ... and so does the module.
    assert chain_hashes(PINNED_TOKENS, 4) == PINNED_HASHES


def test_first_two_blocks_by_hand_with_struct() -> None:
    tokens = [10, 20, 30, 2**32 - 1, 0, 7, 65536, 123456]
    h0_bytes = hashlib.sha256(struct.pack("<Q", SEED) + struct.pack("<4I", 10, 20, 30, 2**32 - 1))
    h0 = struct.unpack("<Q", h0_bytes.digest()[:8])[0]
    h1_bytes = hashlib.sha256(struct.pack("<Q", h0) + struct.pack("<4I", 0, 7, 65536, 123456))
    h1 = struct.unpack("<Q", h1_bytes.digest()[:8])[0]
    assert hash_block(SEED, tokens[:4]) == h0
    assert hash_block(h0, tokens[4:]) == h1
    assert chain_hashes(tokens, 4) == [h0, h1]


def test_hash_block_matches_reference_with_extra() -> None:
    extra = b"lora:adapter-7"
    tokens = [3, 1, 4, 1, 5, 9, 2, 6]
    assert hash_block(SEED, tokens, extra) == _ref_hash(SEED, tokens, extra)
    assert hash_block(12345, tokens) == _ref_hash(12345, tokens)


def test_hash_is_64_bit_unsigned() -> None:
    for tokens in ([0], [1, 2], list(range(16))):
        h = hash_block(SEED, tokens)
        assert 0 <= h < 2**64


def test_only_full_blocks_are_hashed() -> None:
    tokens = list(range(11))
    hashes = chain_hashes(tokens, 4)
    assert len(hashes) == 2
    assert hashes == _ref_chain(tokens, 4)
    # The partial tail does not affect the full blocks' hashes.
    assert chain_hashes(tokens[:8], 4) == hashes
    assert chain_hashes(tokens[:3], 4) == []
    assert chain_hashes([], 4) == []
    assert len(chain_hashes(list(range(12)), 4)) == 3


def test_chain_depends_on_prefix() -> None:
    a = chain_hashes([1, 2, 3, 4, 5, 6, 7, 8], 4)
    b = chain_hashes([9, 2, 3, 4, 5, 6, 7, 8], 4)
    # Same second block, different first block: the second hash must differ too.
    assert a[0] != b[0]
    assert a[1] != b[1]
    # Same first block gives the same first hash.
    c = chain_hashes([1, 2, 3, 4, 0, 0, 0, 0], 4)
    assert c[0] == a[0] and c[1] != a[1]


def test_token_order_matters() -> None:
    assert hash_block(SEED, [1, 2]) != hash_block(SEED, [2, 1])


@pytest.mark.parametrize("split", [0, 1, 2, 3, 5])
def test_extending_from_parent_equals_hashing_from_scratch(split: int) -> None:
    tokens = [(7 * i + 3) % 1000 for i in range(5 * 4 + 2)]
    full = chain_hashes(tokens, 4)
    assert len(full) == 5
    parent = SEED if split == 0 else full[split - 1]
    rest = chain_hashes(tokens, 4, parent=parent, start_block=split)
    assert full[:split] + rest == full
    assert len(rest) == 5 - split


def test_extending_a_growing_sequence() -> None:
    tokens = list(range(100, 106))
    hashes = chain_hashes(tokens, 4)
    assert len(hashes) == 1
    tokens += [106, 107, 108, 109, 110]
    hashes += chain_hashes(tokens, 4, parent=hashes[-1], start_block=len(hashes))
    assert hashes == chain_hashes(tokens, 4) == _ref_chain(tokens, 4)


def test_extra_changes_every_hash() -> None:
    tokens = list(range(8))
    plain = chain_hashes(tokens, 4)
    salted = chain_hashes(tokens, 4, extra=b"x")
    other = chain_hashes(tokens, 4, extra=b"y")
    assert salted == _ref_chain(tokens, 4, b"x")
    assert all(p != s for p, s in zip(plain, salted, strict=True))
    assert all(s != o for s, o in zip(salted, other, strict=True))
    # The default extra is b"", identical to omitting it.
    assert chain_hashes(tokens, 4, extra=b"") == plain


def test_block_size_changes_hashes() -> None:
    tokens = list(range(8))
    assert chain_hashes(tokens, 8) == [_ref_hash(SEED, tokens)]
    assert chain_hashes(tokens, 8)[0] not in chain_hashes(tokens, 4)


def test_token_ids_are_unsigned_32_bit() -> None:
    top = 2**32 - 1
    assert hash_block(SEED, [top]) == _ref_hash(SEED, [top])
    with pytest.raises(struct.error):
        hash_block(SEED, [2**32])
    with pytest.raises(struct.error):
        hash_block(SEED, [-1])


def test_a_cache_salt_seeds_the_whole_chain() -> None:
    tokens = list(range(8))
    assert salted_seed("") == SEED  # no salt: the chain every unsalted request shares
    seed = salted_seed("tenant-a")
    assert seed == _ref_hash(SEED, [], b"cache_salt:tenant-a")
    salted = chain_hashes(tokens, 4, parent=seed)
    assert salted == [_ref_hash(seed, tokens[:4]), _ref_hash(salted[0], tokens[4:])]
    plain, other = chain_hashes(tokens, 4), chain_hashes(tokens, 4, parent=salted_seed("b"))
    assert not set(salted) & (set(plain) | set(other))
