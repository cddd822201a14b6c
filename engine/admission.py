"""What a request must satisfy to be queued, checked once at `Engine.add_request`: nothing
a caller sends may fail a step later, where it would fail every request in the batch.
Each check raises ValueError with a message for the caller (a 400, or a gRPC
INVALID_ARGUMENT at a worker's edge)."""

from __future__ import annotations

from collections.abc import Sequence

from engine.sampling_params import SamplingParams


def check_prompt_ids(ids: Sequence[int], vocab: int) -> None:
    if not ids:
        raise ValueError("prompt must contain at least one token")
    if any(not 0 <= t < vocab for t in ids):
        raise ValueError(f"token ids must be in [0, {vocab})")


def check_params_vocab(params: SamplingParams, vocab: int) -> None:
    """Token ids in the params index the logits: they must be in the vocabulary."""
    for name, ids in (
        ("stop_token_ids", params.stop_token_ids),
        ("logit_bias", [t for t, _ in params.logit_bias]),
    ):
        if any(t >= vocab for t in ids):
            raise ValueError(f"{name} must hold token ids below the vocabulary's {vocab}")


def check_fits(
    prompt_len: int, max_tokens: int, max_model_len: int, num_blocks: int, block_size: int
) -> None:
    """The prompt and its whole output in the model's context and in the KV cache."""
    total = prompt_len + max_tokens
    if total > max_model_len:
        raise ValueError(
            f"prompt ({prompt_len} tokens) + max_tokens ({max_tokens}) = {total} exceeds "
            f"the model's context length of {max_model_len} tokens"
        )
    if total > num_blocks * block_size:
        raise ValueError(
            f"prompt + max_tokens = {total} tokens exceeds the KV cache "
            f"({num_blocks} blocks of {block_size})"
        )
