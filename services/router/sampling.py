"""What the engine is asked for a request: its output budget (resolve_max_tokens) and its
SamplingParams, from a validated body (protocol.py); what the engine would refuse becomes
a 400 naming the body's field."""

from __future__ import annotations

from engine.sampling_params import MIN_TEMPERATURE, SamplingParams
from services.router.errors import APIError
from services.router.protocol import SamplingBody
from services.router.structured import guided_spec

# A request without max_tokens may run to the end of the context (OpenAI's and vLLM's
# default), but not past this: on CPU an unbounded default would hold a decode slot and a
# whole context of KV blocks for minutes, and 1024 tokens covers ordinary chat answers.
DEFAULT_MAX_TOKENS_CAP = 1024


def resolve_max_tokens(body: SamplingBody, prompt_len: int, max_model_len: int) -> int:
    """The output budget: as asked, or the rest of the context up to the cap. Refuses a
    request that cannot fit, as OpenAI does (400, code context_length_exceeded)."""
    asked, param = body.requested_max_tokens()
    room = max_model_len - prompt_len
    if asked is None and room >= 1:
        return min(room, DEFAULT_MAX_TOKENS_CAP)
    if room < 1:  # the prompt alone fills the context: the prompt is what must change
        param = body.prompt_field
    if asked is None or (asked >= 1 and asked > room):
        total = prompt_len + (asked or 1)
        raise APIError(
            400,
            f"This model's maximum context length is {max_model_len} tokens. However, you "
            f"requested {total} tokens ({prompt_len} in the prompt, {total - prompt_len} for "
            "the completion). Please reduce the prompt or the completion length.",
            param=param,
            code="context_length_exceeded",
        )
    return asked  # below 1 it is refused by SamplingParams, naming the field


# SamplingParams names the field its message is about first ("top_p must be ...").
_FIELDS_IN_MESSAGES = {
    "max_tokens",
    "temperature",
    "top_k",
    "top_p",
    "min_tokens",
    "stop",
    "stop_token_ids",
    "presence_penalty",
    "frequency_penalty",
    "repetition_penalty",
    "logit_bias",
    "min_p",
}


# The wire carries top_p as a float32, in which a positive value below this reads as 0 (which
# the worker refuses). Any top_p that small keeps only the most likely token, as this does.
# (A temperature near 0 is sent as 0, greedy: MIN_TEMPERATURE says why.)
_FLOAT32_TINY = 1.1754943508222875e-38  # float32's smallest normal number


def sampling_params(body: SamplingBody, max_tokens: int, vocab_size: int) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    stop_token_ids = body.stop_token_ids or []
    if any(t >= vocab_size for t in stop_token_ids):
        raise APIError(400, f"stop_token_ids must be in [0, {vocab_size}).", param="stop_token_ids")
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0 if body.temperature < MIN_TEMPERATURE else body.temperature,
            top_k=0 if body.top_k == -1 else body.top_k,
            top_p=max(body.top_p, _FLOAT32_TINY),
            seed=body.seed,
            stop=tuple(stop),
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
            logprobs=body.wants_logprobs(),
            top_logprobs=body.wanted_top_logprobs(),
            presence_penalty=body.presence_penalty,
            frequency_penalty=body.frequency_penalty,
            repetition_penalty=body.repetition_penalty,
            logit_bias=_logit_bias(body.logit_bias or {}, vocab_size),
            min_p=body.min_p,
            stop_token_ids=tuple(stop_token_ids),
            guided=guided_spec(body),
            prompt_logprobs=body.wanted_prompt_logprobs(),
        )
    except ValueError as e:
        raise APIError(400, str(e), param=_param_of(str(e), body)) from None


def _logit_bias(bias: dict[str, float], vocab_size: int) -> tuple[tuple[int, float], ...]:
    """OpenAI's map of token ids (as strings) to biases, as the engine's pairs."""
    pairs = []
    for key, value in bias.items():
        token = int(key) if key.isascii() and key.isdigit() else -1
        if not 0 <= token < vocab_size:
            raise APIError(
                400,
                f"logit_bias keys must be token ids in [0, {vocab_size}), got {key!r}.",
                param="logit_bias",
            )
        pairs.append((token, value))
    return tuple(pairs)


def _param_of(message: str, body: SamplingBody) -> str | None:
    first = message.split(" ", 1)[0]
    if first == "max_tokens":
        return body.requested_max_tokens()[1]
    return first if first in _FIELDS_IN_MESSAGES else None
