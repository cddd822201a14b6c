"""The OpenAI wire format at the router's edge: request bodies, and what they ask of the engine.

Bodies are parsed strictly (a string is not an integer, as with OpenAI), and fields we do not
know are ignored (also as OpenAI does). Known fields we cannot honour are refused with a 400
naming the field, never silently dropped: a client asking for n=2 or top_logprobs=5 must not
get an answer shaped as if it had been served.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from engine.sampling_params import SamplingParams
from services.router.errors import APIError

# A request without max_tokens may run to the end of the context (OpenAI's and vLLM's
# default), but not past this: on CPU an unbounded default would hold a decode slot and a
# whole context of KV blocks for minutes, and 1024 tokens covers ordinary chat answers.
DEFAULT_MAX_TOKENS_CAP = 1024

_INT64 = 2**63


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # OpenAI takes `"temperature": null` (and some clients send it) to mean the default.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    # "developer" is OpenAI's newer name for "system"; tool calling is not supported.
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart]

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)  # as vLLM joins text parts


class StreamOptions(_Body):
    include_usage: bool = False


class _SamplingBody(_Body):
    """Fields both endpoints share."""

    prompt_field: ClassVar[str] = ""  # where the prompt is, for errors about its length
    model: str
    n: int = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float = 1.0  # OpenAI's default: sampling, not greedy
    top_p: float = 1.0
    top_k: int = 0  # vLLM extension; 0 or -1 turns it off
    seed: int | None = Field(default=None, ge=-_INT64, lt=_INT64)
    stop: str | list[str] | None = None
    ignore_eos: bool = False  # vLLM extension
    min_tokens: int = 0  # vLLM extension
    presence_penalty: float = 0.0  # accepted only when neutral
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None
    user: str | None = None  # ignored

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The asked-for output length and the field that asked for it."""
        return self.max_tokens, "max_tokens"

    def wants_logprobs(self) -> bool:
        return False

    def check_supported(self) -> None:
        if self.n != 1:
            raise APIError(400, "Only n=1 is supported: one choice per request.", param="n")
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options is only allowed with stream=true.", param="stream_options"
            )
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) != 0.0:
                raise APIError(400, f"{name} is not supported; leave it at 0.", param=name)
        if self.logit_bias:
            raise APIError(400, "logit_bias is not supported.", param="logit_bias")


class ChatCompletionRequest(_SamplingBody):
    prompt_field: ClassVar[str] = "messages"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    logprobs: bool = False
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:  # OpenAI's current name wins
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def wants_logprobs(self) -> bool:
        return self.logprobs

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs is not None and not 0 <= self.top_logprobs <= 20:
            raise APIError(400, "top_logprobs must be in [0, 20].", param="top_logprobs")
        if self.top_logprobs:
            raise APIError(
                400,
                "top_logprobs is not supported: only the chosen token's logprob is returned "
                "(send logprobs=true without top_logprobs).",
                param="top_logprobs",
            )
        if self.tools:
            raise APIError(400, "Tool calling is not supported.", param="tools")
        if self.response_format and self.response_format.get("type", "text") != "text":
            raise APIError(
                400, "Only response_format type 'text' is supported.", param="response_format"
            )

    def chat(self) -> list[dict[str, str]]:
        """Messages as the chat template takes them."""
        return [
            {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
            for m in self.messages
        ]


class CompletionRequest(_SamplingBody):
    prompt_field: ClassVar[str] = "prompt"
    # One prompt: text or token ids (a list holding one of either is accepted too).
    prompt: str | list[int] | list[str] | list[list[int]]
    logprobs: int | None = None  # 0 or 1: the chosen token's logprob
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def check_supported(self) -> None:
        super().check_supported()
        if self.logprobs is not None and not 0 <= self.logprobs <= 5:
            raise APIError(400, "logprobs must be in [0, 5].", param="logprobs")
        if self.logprobs is not None and self.logprobs > 1:
            raise APIError(
                400,
                "logprobs > 1 is not supported: only the chosen token's logprob is returned "
                "(send logprobs=1 or 0).",
                param="logprobs",
            )
        if self.echo:
            raise APIError(400, "echo is not supported.", param="echo")
        if self.best_of not in (None, 1):
            raise APIError(400, "Only best_of=1 is supported.", param="best_of")
        if self.suffix:
            raise APIError(400, "suffix is not supported.", param="suffix")

    def single_prompt(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, str) or not p or isinstance(p[0], int):
            return p  # type: ignore[return-value]
        if len(p) != 1:
            raise APIError(400, "Only one prompt per request is supported (n=1).", param="prompt")
        return p[0]


# ---- what the engine is asked for ------------------------------------------------------
def resolve_max_tokens(body: _SamplingBody, prompt_len: int, max_model_len: int) -> int:
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
_FIELDS_IN_MESSAGES = {"max_tokens", "temperature", "top_k", "top_p", "min_tokens", "stop"}


def sampling_params(body: _SamplingBody, max_tokens: int) -> SamplingParams:
    stop = [body.stop] if isinstance(body.stop, str) else (body.stop or [])
    try:
        return SamplingParams(
            max_tokens=max_tokens,
            temperature=body.temperature,
            top_k=0 if body.top_k == -1 else body.top_k,
            top_p=body.top_p,
            seed=body.seed,
            stop=tuple(stop),
            ignore_eos=body.ignore_eos,
            min_tokens=body.min_tokens,
            logprobs=body.wants_logprobs(),
        )
    except ValueError as e:
        raise APIError(400, str(e), param=_param_of(str(e), body)) from None


def _param_of(message: str, body: _SamplingBody) -> str | None:
    first = message.split(" ", 1)[0]
    if first == "max_tokens":
        return body.requested_max_tokens()[1]
    return first if first in _FIELDS_IN_MESSAGES else None
