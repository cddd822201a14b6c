"""How the dispatcher (dispatch.py) runs requests: the router's flags, validated once."""

from __future__ import annotations

from dataclasses import dataclass

from services.router.admission import DEFAULT_QUEUE_PER_SEQ
from services.router.routing import ROUTINGS

MODES = ("disagg", "colocated")
DEFAULT_DECODE_ATTEMPTS = 3  # decode workers a request may run on (the first included)
DEFAULT_MAX_HELD = 256  # requests held at once while a pool is at zero
# How long they wait when the autoscaler may take the serving pool to zero (tandem serve):
# a worker's start (a model load, warm-up) with room to spare.
DEFAULT_HOLD_AT_ZERO_S = 120.0


@dataclass(frozen=True, slots=True)
class DispatchConfig:
    mode: str = "disagg"
    routing: str = "kv"  # see services/router/routing.py
    # Prompts this short are prefilled on the decode worker: moving their few blocks costs
    # more than computing them (conditional disaggregation).
    local_prefill_tokens: int = 64
    # Prefill on the decode worker when it would start the prompt sooner than any prefill
    # worker (Dynamo's disaggregated router decides on the prefill queue likewise).
    balance_prefill: bool = True
    prefill_timeout_s: float | None = None  # None: from the prompt (prefill_deadline.py)
    decode_attempts: int = DEFAULT_DECODE_ATTEMPTS
    queue_per_seq: float = DEFAULT_QUEUE_PER_SEQ  # admission.py; < 0 accepts everything
    refresh_s: float = 0.5  # how often the registry is read
    health_s: float = 1.0  # how often each worker's health is checked (health_checks.py)
    # A request finding its pool empty (scaled to zero) waits this long for a first worker,
    # at most max_held of them at once (cold_start.py); 0: 503 at once.
    hold_for_worker_s: float = 0.0
    max_held_requests: int = DEFAULT_MAX_HELD

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.routing not in ROUTINGS:
            raise ValueError(f"routing must be one of {ROUTINGS}, got {self.routing!r}")
        if self.local_prefill_tokens < 0:
            raise ValueError("local_prefill_tokens must be >= 0")
        if self.decode_attempts < 1:
            raise ValueError("decode_attempts must be >= 1")
        if self.hold_for_worker_s < 0 or self.max_held_requests < 1:
            raise ValueError("need hold_for_worker_s >= 0 and max_held_requests >= 1")
