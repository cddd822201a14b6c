"""KVIndex: which workers hold which cached blocks, in the router's memory.

Each worker gets a small integer slot; a slot is one bit. Every cached hash maps to the
bitmask of the slots holding it, and every worker keeps the set of its hashes:

    slot:     alice=0  bob=1  carol=2           (freed slots are reused, lowest first)
    _masks:   h0 -> 0b111    h1 -> 0b011    h2 -> 0b001    h7 -> 0b100
    _held:    alice {h0 h1 h2}   bob {h0 h1}   carol {h0 h7}

    lookup([h0, h1, h2, h3])  walks the prompt ANDing masks:
        depth 0: 0b111   depth 1: 0b011 (carol out at 1)   depth 2: 0b001 (bob out at 2)
        depth 3: 0b000 (alice out at 3, stop)   -> {alice: 3, bob: 2, carol: 1}

Invariants (check_integrity): bit s is set in _masks[h] iff h is in the set of the worker
in slot s; no mask is 0 (its entry is deleted); slots in use and free slots partition
range(num_slots). Only ints are stored, so a million entries cost ints and hash-table
slots, no objects; a worker that leaves (purge) gives back its entries and its slot.

Why bitmasks: a lookup is one dict probe and one AND per prompt block whatever the number
of workers, where a per-worker scan costs workers x blocks probes.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Sequence

from services.pb.events_pb2 import KVEvent


class KVIndex:
    def __init__(self) -> None:
        self._masks: dict[int, int] = {}  # hash -> bitmask of slots holding it
        self._held: dict[str, set[int]] = {}  # worker -> its hashes
        self._slot: dict[str, int] = {}  # worker -> slot
        self._by_bit: dict[int, str] = {}  # 1 << slot -> worker (lookup's reverse map)
        self._free: list[int] = []  # heap of freed slots: reuse the lowest, keep masks small
        self._next_slot = 0
        self._entries = 0

    # ---- queries ------------------------------------------------------------------

    def lookup(self, hashes: Sequence[int]) -> dict[str, int]:
        """Worker -> number of leading blocks of `hashes` it holds (only workers with > 0)."""
        if not hashes:
            return {}
        masks, by_bit = self._masks, self._by_bit
        alive = masks.get(hashes[0], 0)  # depth 0 drops nobody, so every count is >= 1
        if not alive:
            return {}
        out: dict[str, int] = {}
        depth = 0
        for h in hashes:
            now = alive & masks.get(h, 0)
            if now != alive:
                gone = alive ^ now  # workers whose leading run ends before block `depth`
                while gone:
                    bit = gone & -gone
                    out[by_bit[bit]] = depth
                    gone ^= bit
                if not now:
                    return out
                alive = now
            depth += 1
        while alive:  # held the whole prompt
            bit = alive & -alive
            out[by_bit[bit]] = depth
            alive ^= bit
        return out

    def workers(self) -> list[str]:
        return list(self._held)

    def blocks_of(self, worker_id: str) -> int:
        held = self._held.get(worker_id)
        return len(held) if held is not None else 0

    @property
    def num_hashes(self) -> int:
        """Distinct hashes held by any worker."""
        return len(self._masks)

    @property
    def num_entries(self) -> int:
        """(worker, hash) pairs."""
        return self._entries

    @property
    def num_slots(self) -> int:
        """Slots ever handed out (in use + free): bounded by the most workers at once."""
        return self._next_slot

    # ---- updates ------------------------------------------------------------------

    def apply(self, worker_id: str, events: Iterable[KVEvent]) -> None:
        """Apply one worker's events in order. No seq checks: the consumer does them."""
        held, bit = self._worker(worker_id)
        masks = self._masks
        added = 0
        for ev in events:
            kind = ev.WhichOneof("kind")
            if kind == "stored":
                h = ev.stored.block_hash
                if h not in held:
                    held.add(h)
                    masks[h] = masks.get(h, 0) | bit
                    added += 1
            elif kind == "removed":
                h = ev.removed.block_hash
                if h in held:  # an unknown hash (never seen, or already gone) is harmless
                    held.remove(h)
                    self._drop(h, bit)
                    added -= 1
            elif kind == "cleared":
                added -= len(held)
                self._drop_all(held, bit)
        self._entries += added

    def replace(self, worker_id: str, hashes: Iterable[int]) -> None:
        """The worker's whole cache is `hashes` (a snapshot or resync): apply only the diff."""
        held, bit = self._worker(worker_id)
        new = set(hashes)
        masks = self._masks
        for h in held - new:
            self._drop(h, bit)
        for h in new - held:
            masks[h] = masks.get(h, 0) | bit
        self._entries += len(new) - len(held)
        self._held[worker_id] = new

    def purge(self, worker_id: str) -> None:
        """Forget the worker (it left): its entries go, and its slot is free for reuse."""
        held = self._held.pop(worker_id, None)
        if held is None:
            return
        slot = self._slot.pop(worker_id)
        bit = 1 << slot
        self._entries -= len(held)
        self._drop_all(held, bit)
        del self._by_bit[bit]
        heapq.heappush(self._free, slot)

    # ---- internals ----------------------------------------------------------------

    def _worker(self, worker_id: str) -> tuple[set[int], int]:
        held = self._held.get(worker_id)
        if held is not None:
            return held, 1 << self._slot[worker_id]
        slot = heapq.heappop(self._free) if self._free else self._take_slot()
        self._slot[worker_id] = slot
        self._by_bit[1 << slot] = worker_id
        held = self._held[worker_id] = set()
        return held, 1 << slot

    def _take_slot(self) -> int:
        self._next_slot += 1
        return self._next_slot - 1

    def _drop(self, h: int, bit: int) -> None:
        m = self._masks[h] & ~bit
        if m:
            self._masks[h] = m
        else:
            del self._masks[h]  # no zero masks: memory follows what is cached

    def _drop_all(self, held: set[int], bit: int) -> None:
        for h in held:
            self._drop(h, bit)
        held.clear()

    def check_integrity(self) -> None:
        """Raise AssertionError unless every invariant in the module docstring holds."""
        slots = set(self._slot.values())
        assert len(slots) == len(self._slot), "two workers share a slot"
        assert slots.isdisjoint(self._free), "a slot is both used and free"
        assert len(slots) + len(self._free) == self._next_slot, "a slot leaked"
        assert set(self._slot) == set(self._held), "slot and hash maps disagree"
        assert self._by_bit == {1 << s: w for w, s in self._slot.items()}
        rebuilt: dict[int, int] = {}
        for w, held in self._held.items():
            bit = 1 << self._slot[w]
            for h in held:
                rebuilt[h] = rebuilt.get(h, 0) | bit
        assert rebuilt == self._masks, "masks disagree with the per-worker sets"
        assert self._entries == sum(len(h) for h in self._held.values()), "entry count drift"
