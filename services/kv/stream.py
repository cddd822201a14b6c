"""A worker's KV events in Redis: the layout both the publisher (worker) and the feed
(router) speak. The worker is the only writer of its keys; every write is one Lua script,
so the three keys always agree with each other:

    tandem:kv:<worker_id>:stream  entries {b: KVEventBatch}, trimmed to ~MAXLEN entries
    tandem:kv:<worker_id>:blocks  SET of the worker's cached block hashes (decimal)
    tandem:kv:<worker_id>:state   "<started_at_unix_ms>:<seq>", the last event in :blocks

A reader that starts late reads :state, :blocks and the stream's last entry id in one
MULTI, then tails the stream from that id: it knows what every other reader knows.
All three keys expire `ttl` after the worker's last write (it writes a keepalive every
second), so a dead worker's state leaves Redis by itself.
"""

from __future__ import annotations

from dataclasses import dataclass

FIELD = b"b"  # the stream entry's one field: a serialized KVEventBatch
MAXLEN = 10_000  # entries kept per worker: a reader further behind resyncs (it sees a gap)

# KEYS: stream, blocks, state.
# ARGV: expected state ("" writes unconditionally: a snapshot), new state, entry bytes,
#       maxlen, ttl ms, clear ("1": empty :blocks first), number of hashes to add,
#       the hashes to add, then the hashes to remove.
# Returns 0, writing nothing, when :state is not the expected one: Redis lost the worker's
# state (a restart) or it was never written, and the worker must write a snapshot.
PUBLISH_LUA = """
if ARGV[1] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[1] then return 0 end
if ARGV[6] == '1' then redis.call('DEL', KEYS[2]) end
local last_add = 7 + tonumber(ARGV[7])
local i = 8
while i <= last_add do
  local j = math.min(i + 999, last_add)
  redis.call('SADD', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
while i <= #ARGV do
  local j = math.min(i + 999, #ARGV)
  redis.call('SREM', KEYS[2], unpack(ARGV, i, j))
  i = j + 1
end
redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[4], '*', 'b', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[5])
return 1
"""


@dataclass(frozen=True, slots=True)
class KVKeys:
    stream: str
    blocks: str
    state: str

    @classmethod
    def of(cls, worker_id: str, prefix: str = "tandem") -> KVKeys:
        base = f"{prefix}:kv:{worker_id}"
        return cls(f"{base}:stream", f"{base}:blocks", f"{base}:state")


def state_value(started_at_ms: int, seq: int) -> str:
    return f"{started_at_ms}:{seq}"


def parse_state(raw: bytes | str | None) -> tuple[int, int] | None:
    """(started_at_ms, seq) from a :state value; None when there is none."""
    if raw is None:
        return None
    text = raw.decode() if isinstance(raw, bytes) else raw
    started, seq = text.split(":")
    return int(started), int(seq)
