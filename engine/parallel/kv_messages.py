"""What rank 0 of a tensor-parallel worker and its followers say to each other about their
KV memory (engine/parallel/kv.py, follower_kv.py), over the pipe that carries each step's
plan: plain picklable dataclasses."""

from __future__ import annotations

from dataclasses import dataclass

from engine.transfer.base import PeerKV, ReadResult


@dataclass(frozen=True, slots=True)
class StartAgent:
    name: str


@dataclass(frozen=True, slots=True)
class AgentReady:
    peer: PeerKV


@dataclass(frozen=True, slots=True)
class AddPeer:
    peer: PeerKV


@dataclass(frozen=True, slots=True)
class PeerAdded:
    error: str  # empty: added


@dataclass(frozen=True, slots=True)
class RemovePeer:
    agent_name: str  # the peer's rank 0 (its ranks this rank loaded go with it)


@dataclass(frozen=True, slots=True)
class Read:
    read_id: int
    peer_name: str  # the peer's rank 0: this rank reads its heads from the peer's ranks
    remote: list[int]
    local: list[int]


@dataclass(frozen=True, slots=True)
class Cancel:
    read_id: int


@dataclass(frozen=True, slots=True)
class ReadEnded:
    read_id: int
    result: ReadResult | None  # None: failed or cancelled (`error` says which)
    error: str = ""


FollowerMessage = StartAgent | AddPeer | RemovePeer | Read | Cancel
