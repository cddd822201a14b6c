"""The OpenAI wire format at the router's edge: request bodies, and what they ask of the engine.

Bodies are parsed strictly (a string is not an integer, as with OpenAI; 2.0 is one, as JSON
Schema counts them), and fields we do not know are ignored (also as OpenAI does). Known
fields we cannot honour are refused with a 400 naming the field, never silently dropped: a
client asking for n=2 or for tools must not get an answer shaped as if it had been
served.

The OpenAPI schema (/openapi.json) states what is accepted, so that generated clients and
fuzzers send requests that reach the engine: each range is a pydantic constraint (enforced
and documented at once), and a field we serve only at one value says so in its schema while
`check_supported` refuses the rest with a message naming it. Integer ranges stay inside the
wire's types (proto/worker.proto), and temperature and top_p survive its float32
(sampling_params): nothing a client sends can overflow a protobuf field.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from engine.sampling_params import (
    MAX_LOGIT_BIAS,
    MAX_STOP_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_LOGPROBS,
)
from services.router.errors import APIError
from services.router.unicode_check import has_lone_surrogate
from services.router.unsupported import refuse_unsupported

_INT64 = 2**63
_UINT32 = 2**32  # max_tokens, top_k and min_tokens are uint32 on the wire


def _whole(value: Any) -> Any:
    # JSON has one kind of number, and to JSON Schema (so to the generated clients and
    # fuzzers that read ours) 2.0 is the integer 2: taken as one. 2.5 is still refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Last in an Annotated integer, after its constraints (pydantic then still writes them into
# the schema as JSON Schema's minimum and maximum).
_WHOLE = BeforeValidator(_whole)


def _served(**schema: Any) -> Any:
    """Schema only: what we serve of something OpenAI defines more widely (n: only 1). The
    schema says it, so generated requests reach the engine; `check_supported` and prompts.py
    refuse the rest with a message that says it is not supported, which a bare range error
    would not."""
    return Field(json_schema_extra=schema)


StopString = Annotated[str, StringConstraints(min_length=1, max_length=MAX_STOP_CHARS)]
StopList = Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)]
# A prompt's token id. The served tokenizer's vocabulary bounds it further (prompts.py), and
# the served schema says so (openapi_doc.served_openapi fills in the bound this key marks).
BELOW_VOCAB = "x-below-vocab-size"
TokenId = Annotated[int, Field(ge=0, lt=_UINT32, json_schema_extra={BELOW_VOCAB: True}), _WHOLE]
TextPrompt = Annotated[str, _served(minLength=1)]  # "" has no token to start from
IdsPrompt = Annotated[list[TokenId], _served(minItems=1)]
OnePrompt = _served(minItems=1, maxItems=1)  # a batch of prompts: only a batch of one


class _Body(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")

    @model_validator(mode="before")
    @classmethod
    def _null_is_absent(cls, data: Any) -> Any:
        # OpenAI takes `"temperature": null` (and some clients send it) to mean the default.
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if v is not None}
        return data

    @field_validator("*", mode="before")
    @classmethod
    def _unicode_only(cls, value: Any) -> Any:
        # JSON's "\ud800" escapes parse to lone surrogates, which are no characters: UTF-8
        # cannot encode them, so the tokenizer, protobuf and our own error bodies would each
        # fail on one later (a 500). Refused here, naming the field.
        if has_lone_surrogate(value):
            raise ValueError("text must be valid Unicode (it holds a lone surrogate)")
        return value


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


class SamplingBody(_Body):
    """Fields both endpoints share."""

    prompt_field: ClassVar[str] = ""  # where the prompt is, for errors about its length
    model: str
    n: Annotated[int, _served(minimum=1, maximum=1), _WHOLE] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # The upper bound is the context left after the prompt (resolve_max_tokens), always
    # below the wire's uint32.
    max_tokens: Annotated[int, Field(ge=1), _WHOLE] | None = None
    # OpenAI's default temperature is 1: sampling, not greedy.
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # vLLM's extensions: top_k (0 or -1 turns it off), ignore_eos, min_tokens (<= max_tokens).
    top_k: Annotated[int, Field(ge=-1, lt=_UINT32), _WHOLE] = 0
    # OpenAI's seeds are int64; the wire's uint64 takes them modulo 2**64 (SamplingParams).
    seed: Annotated[int, Field(ge=-_INT64, lt=_INT64), _WHOLE] | None = None
    stop: StopString | StopList | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, lt=_UINT32), _WHOLE] = 0
    # Logit changes (engine/logit_adjust.py): OpenAI's penalties and logit_bias (token ids
    # as strings, checked against the vocabulary by sampling.py), vLLM's repetition_penalty,
    # min_p and stop_token_ids.
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repetition_penalty: Annotated[float, Field(gt=0.0, le=2.0)] = 1.0
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]],
            Field(max_length=MAX_LOGIT_BIAS),
        ]
        | None
    ) = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    # vLLM's: the text ends after the stop string that ended it, not before; special tokens
    # (e.g. <|im_end|>) in the text or not
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    user: str | None = None  # ignored
    # vLLM's: prefix-cache hits only among requests with the same salt (engine/hashing.py),
    # so one tenant cannot learn from hit timings or routing what another one sent.
    cache_salt: Annotated[str, StringConstraints(min_length=1, max_length=256)] | None = None

    @model_validator(mode="before")
    @classmethod
    def _nothing_dropped(cls, data: Any) -> Any:
        refuse_unsupported(data)  # a field that would change the answer: 400 (unsupported.py)
        return data

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def requested_max_tokens(self) -> tuple[int | None, str]:
        """The asked-for output length and the field that asked for it."""
        return self.max_tokens, "max_tokens"

    def wants_logprobs(self) -> bool:
        return False

    def wanted_top_logprobs(self) -> int:
        """How many of the likeliest tokens' logprobs to return at each position."""
        return 0

    def check_supported(self) -> None:
        if self.n != 1:
            raise APIError(400, "Only n=1 is supported: one choice per request.", param="n")
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options is only allowed with stream=true.", param="stream_options"
            )


_TEXT_FORMAT = {"type": {"const": "text"}}


class ChatCompletionRequest(SamplingBody):
    prompt_field: ClassVar[str] = "messages"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), _WHOLE] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), _WHOLE] | None = None
    tools: Annotated[list[Any], _served(maxItems=0)] | None = None
    response_format: Annotated[dict[str, Any], _served(properties=_TEXT_FORMAT)] | None = None

    def requested_max_tokens(self) -> tuple[int | None, str]:
        if self.max_completion_tokens is not None:  # OpenAI's current name wins
            return self.max_completion_tokens, "max_completion_tokens"
        return self.max_tokens, "max_tokens"

    def wants_logprobs(self) -> bool:
        return self.logprobs

    def wanted_top_logprobs(self) -> int:
        return self.top_logprobs or 0

    def check_supported(self) -> None:
        super().check_supported()
        if self.top_logprobs and not self.logprobs:  # as OpenAI refuses it
            raise APIError(400, "top_logprobs needs logprobs=true.", param="top_logprobs")
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


class CompletionRequest(SamplingBody):
    prompt_field: ClassVar[str] = "prompt"
    # One prompt: text or token ids (a list holding one of either is accepted too).
    prompt: (
        TextPrompt
        | IdsPrompt
        | Annotated[list[TextPrompt], OnePrompt]
        | Annotated[list[IdsPrompt], OnePrompt]
    )
    # the chosen token's logprob, and the k likeliest tokens' (OpenAI's legacy bound: 5)
    logprobs: Annotated[int, Field(ge=0, le=5), _WHOLE] | None = None
    echo: Annotated[bool, _served(const=False)] = False
    best_of: Annotated[int, _served(minimum=1, maximum=1), _WHOLE] | None = None
    suffix: Annotated[str, _served(maxLength=0)] | None = None

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def wanted_top_logprobs(self) -> int:
        return self.logprobs or 0

    def check_supported(self) -> None:
        super().check_supported()
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
