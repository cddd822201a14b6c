from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class KVEvent(_message.Message):
    __slots__ = ("worker_id", "seq", "stored", "removed", "cleared")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    STORED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    seq: int
    stored: BlockStored
    removed: BlockRemoved
    cleared: AllBlocksCleared
    def __init__(self, worker_id: _Optional[str] = ..., seq: _Optional[int] = ..., stored: _Optional[_Union[BlockStored, _Mapping]] = ..., removed: _Optional[_Union[BlockRemoved, _Mapping]] = ..., cleared: _Optional[_Union[AllBlocksCleared, _Mapping]] = ...) -> None: ...

class BlockStored(_message.Message):
    __slots__ = ("block_hash", "parent_hash", "token_ids", "block_id")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    PARENT_HASH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    block_hash: int
    parent_hash: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    block_id: int
    def __init__(self, block_hash: _Optional[int] = ..., parent_hash: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., block_id: _Optional[int] = ...) -> None: ...

class BlockRemoved(_message.Message):
    __slots__ = ("block_hash", "block_id")
    BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_ID_FIELD_NUMBER: _ClassVar[int]
    block_hash: int
    block_id: int
    def __init__(self, block_hash: _Optional[int] = ..., block_id: _Optional[int] = ...) -> None: ...

class AllBlocksCleared(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KVEventBatch(_message.Message):
    __slots__ = ("worker_id", "started_at_unix_ms", "events", "seq", "snapshot", "block_hashes")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    started_at_unix_ms: int
    events: _containers.RepeatedCompositeFieldContainer[KVEvent]
    seq: int
    snapshot: bool
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, worker_id: _Optional[str] = ..., started_at_unix_ms: _Optional[int] = ..., events: _Optional[_Iterable[_Union[KVEvent, _Mapping]]] = ..., seq: _Optional[int] = ..., snapshot: _Optional[bool] = ..., block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class WorkerRecord(_message.Message):
    __slots__ = ("worker_id", "role", "grpc_address", "model", "block_size", "num_blocks", "nixl_agent", "nixl_metadata", "kv_base_addr", "kv_block_bytes", "kv_device_id", "free_blocks", "running", "waiting", "queued_prefill_tokens", "started_at_unix_ms", "heartbeat_unix_ms", "max_model_len", "used_blocks", "held_blocks", "max_num_seqs", "prefill_steps_total", "prefill_tokens_total", "prefill_busy_us_total", "decode_steps_total", "decode_tokens_total", "decode_busy_us_total", "prompt_tokens_p50", "prompt_tokens_p90", "output_tokens_p50", "output_tokens_p90", "metrics_address", "nixl_ranks", "stream_address", "kv_heads", "kv_head_groups", "running_output_tokens_p90", "answers_at_limit")
    WORKER_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    NUM_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    NIXL_AGENT_FIELD_NUMBER: _ClassVar[int]
    NIXL_METADATA_FIELD_NUMBER: _ClassVar[int]
    KV_BASE_ADDR_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_BYTES_FIELD_NUMBER: _ClassVar[int]
    KV_DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    FREE_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    QUEUED_PREFILL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_UNIX_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    USED_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    HELD_BLOCKS_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SEQS_FIELD_NUMBER: _ClassVar[int]
    PREFILL_STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREFILL_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PREFILL_BUSY_US_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DECODE_STEPS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DECODE_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    DECODE_BUSY_US_TOTAL_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_P50_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_P90_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_P50_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_TOKENS_P90_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NIXL_RANKS_FIELD_NUMBER: _ClassVar[int]
    STREAM_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    KV_HEADS_FIELD_NUMBER: _ClassVar[int]
    KV_HEAD_GROUPS_FIELD_NUMBER: _ClassVar[int]
    RUNNING_OUTPUT_TOKENS_P90_FIELD_NUMBER: _ClassVar[int]
    ANSWERS_AT_LIMIT_FIELD_NUMBER: _ClassVar[int]
    worker_id: str
    role: str
    grpc_address: str
    model: str
    block_size: int
    num_blocks: int
    nixl_agent: str
    nixl_metadata: bytes
    kv_base_addr: int
    kv_block_bytes: int
    kv_device_id: int
    free_blocks: int
    running: int
    waiting: int
    queued_prefill_tokens: int
    started_at_unix_ms: int
    heartbeat_unix_ms: int
    max_model_len: int
    used_blocks: int
    held_blocks: int
    max_num_seqs: int
    prefill_steps_total: int
    prefill_tokens_total: int
    prefill_busy_us_total: int
    decode_steps_total: int
    decode_tokens_total: int
    decode_busy_us_total: int
    prompt_tokens_p50: int
    prompt_tokens_p90: int
    output_tokens_p50: int
    output_tokens_p90: int
    metrics_address: str
    nixl_ranks: _containers.RepeatedCompositeFieldContainer[NixlRank]
    stream_address: str
    kv_heads: int
    kv_head_groups: int
    running_output_tokens_p90: int
    answers_at_limit: float
    def __init__(self, worker_id: _Optional[str] = ..., role: _Optional[str] = ..., grpc_address: _Optional[str] = ..., model: _Optional[str] = ..., block_size: _Optional[int] = ..., num_blocks: _Optional[int] = ..., nixl_agent: _Optional[str] = ..., nixl_metadata: _Optional[bytes] = ..., kv_base_addr: _Optional[int] = ..., kv_block_bytes: _Optional[int] = ..., kv_device_id: _Optional[int] = ..., free_blocks: _Optional[int] = ..., running: _Optional[int] = ..., waiting: _Optional[int] = ..., queued_prefill_tokens: _Optional[int] = ..., started_at_unix_ms: _Optional[int] = ..., heartbeat_unix_ms: _Optional[int] = ..., max_model_len: _Optional[int] = ..., used_blocks: _Optional[int] = ..., held_blocks: _Optional[int] = ..., max_num_seqs: _Optional[int] = ..., prefill_steps_total: _Optional[int] = ..., prefill_tokens_total: _Optional[int] = ..., prefill_busy_us_total: _Optional[int] = ..., decode_steps_total: _Optional[int] = ..., decode_tokens_total: _Optional[int] = ..., decode_busy_us_total: _Optional[int] = ..., prompt_tokens_p50: _Optional[int] = ..., prompt_tokens_p90: _Optional[int] = ..., output_tokens_p50: _Optional[int] = ..., output_tokens_p90: _Optional[int] = ..., metrics_address: _Optional[str] = ..., nixl_ranks: _Optional[_Iterable[_Union[NixlRank, _Mapping]]] = ..., stream_address: _Optional[str] = ..., kv_heads: _Optional[int] = ..., kv_head_groups: _Optional[int] = ..., running_output_tokens_p90: _Optional[int] = ..., answers_at_limit: _Optional[float] = ...) -> None: ...

class NixlRank(_message.Message):
    __slots__ = ("agent", "metadata", "base_addr", "device_id")
    AGENT_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    BASE_ADDR_FIELD_NUMBER: _ClassVar[int]
    DEVICE_ID_FIELD_NUMBER: _ClassVar[int]
    agent: str
    metadata: bytes
    base_addr: int
    device_id: int
    def __init__(self, agent: _Optional[str] = ..., metadata: _Optional[bytes] = ..., base_addr: _Optional[int] = ..., device_id: _Optional[int] = ...) -> None: ...
