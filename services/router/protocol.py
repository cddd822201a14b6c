"""The OpenAI wire format at the router's edge: request bodies, and what they ask of the engine.

Bodies are parsed strictly (a string is not an integer, as with OpenAI; 2.0 is one, as JSON
Schema counts them), and fields we do not know are ignored (also as OpenAI does). Known
fields we cannot honour are refused with a 400 naming the field, never silently dropped: a
client asking for tools or for echo must not get an answer shaped as if it had been
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
    ConfigDict,
    Field,
    StringConstraints,
    model_validator,
)

from engine.sampling_params import (
    MAX_GUIDED_CHARS,
    MAX_LOGIT_BIAS,
    MAX_STOP_TOKEN_IDS,
    MAX_TOP_LOGPROBS,
    MIN_REPETITION_PENALTY,
)
from services.router.body_types import (
    INT64,
    UINT32,
    WHOLE,
    Body,
    StopList,
    StopString,
    TokenIds,
    served,
)
from services.router.errors import APIError
from services.router.tool_bodies import MAX_TOOLS, NamedToolChoice, ToolCallIn, ToolDef, arguments
from services.router.unsupported import refuse_unsupported

# logit_bias's keys: token ids as OpenAI sends them, decimal strings. The served schema
# asks for ones below 10,000 (any vocabulary holds those); sampling.py checks the real bound.
_SERVED_TOKEN_KEY = "^(0|[1-9][0-9]{0,3})$"
MAX_GUIDED_CHOICES = 256  # guided_choice's strings: one grammar alternative each
# choices.py: `n` choices of each prompt, and up to this many prompts in one completion
MAX_N, MAX_PROMPTS = 8, 8


class TextPart(Body):
    type: Literal["text"]
    text: str


class ChatMessage(Body):
    # "developer" is OpenAI's newer name for "system"
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None  # None only for an assistant's tool calls
    tool_calls: Annotated[list[ToolCallIn], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: str | None = None  # a tool's message: the call it answers
    name: str | None = None

    @model_validator(mode="after")
    def _content_or_calls(self) -> ChatMessage:
        if self.content is None and not (self.role == "assistant" and self.tool_calls):
            raise ValueError("content is required, but for an assistant's tool calls")
        if self.tool_calls and self.role != "assistant":
            raise ValueError("only an assistant's message carries tool_calls")
        return self

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)  # as vLLM joins text parts

    def for_template(self) -> dict[str, Any]:
        """As chat templates take a message (transformers' form: a call's arguments as an
        object where they are one)."""
        out: dict[str, Any] = {
            "role": "system" if self.role == "developer" else self.role,
            "content": self.text(),
        }
        if self.tool_calls:
            out["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.function.name, "arguments": arguments(c)},
                }
                for c in self.tool_calls
            ]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        return out


# a regex or a grammar's text
GuidedText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_GUIDED_CHARS)]


class StructuredOutputs(Body):
    """vLLM's newer form of its guided_* fields: exactly one of json, regex, choice or
    grammar. Its other keys (structural_tag, ...) are refused, not ignored."""

    model_config = ConfigDict(
        strict=True, extra="forbid", json_schema_extra={"maxProperties": 1, "minProperties": 1}
    )
    json_schema: dict[str, Any] | None = Field(default=None, alias="json")
    regex: GuidedText | None = None
    choice: Annotated[list[str], Field(min_length=1, max_length=MAX_GUIDED_CHOICES)] | None = None
    grammar: GuidedText | None = None


class StreamOptions(Body):
    include_usage: bool = False


class SamplingBody(Body):
    """Fields both endpoints share."""

    prompt_field: ClassVar[str] = ""  # where the prompt is, for errors about its length
    model: str
    n: Annotated[int, Field(ge=1, le=MAX_N), WHOLE] = 1
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Tandem's: usage also says where the start went (openai_format.usage_body); a stream
    # sends usage only with stream_options.include_usage
    include_timing: bool = False
    # The upper bound is the context left after the prompt (resolve_max_tokens), always
    # below the wire's uint32.
    max_tokens: Annotated[int, Field(ge=1), WHOLE] | None = None
    # OpenAI's default temperature is 1: sampling, not greedy.
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 1.0
    top_p: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    # vLLM's extensions: top_k (0 or -1 turns it off), ignore_eos, min_tokens (<= max_tokens).
    top_k: Annotated[int, Field(ge=-1, lt=UINT32), WHOLE] = 0
    # OpenAI's seeds are int64; the wire's uint64 takes them modulo 2**64 (SamplingParams).
    seed: Annotated[int, Field(ge=-INT64, lt=INT64), WHOLE] | None = None
    stop: StopString | StopList | None = None
    ignore_eos: bool = False
    min_tokens: Annotated[int, Field(ge=0, lt=UINT32), WHOLE] = 0
    # Logit changes (engine/logit_adjust.py): OpenAI's penalties and logit_bias (token ids
    # as strings, checked against the vocabulary by sampling.py), vLLM's repetition_penalty,
    # min_p and stop_token_ids.
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0)] = 0.0
    repetition_penalty: Annotated[float, Field(ge=MIN_REPETITION_PENALTY, le=2.0)] = 1.0
    logit_bias: (
        Annotated[
            dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]],
            Field(max_length=MAX_LOGIT_BIAS),
            served(propertyNames={"pattern": _SERVED_TOKEN_KEY}),
        ]
        | None
    ) = None
    min_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    stop_token_ids: Annotated[TokenIds, Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    # vLLM's: the text ends after the stop string that ended it, not before; special tokens
    # (e.g. <|im_end|>) in the text or not
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    # vLLM's structured output (structured.py; OpenAI's response_format is chat's, below)
    # (a schema, or its JSON text; the served schema says object, the form that cannot be
    # malformed)
    guided_json: (
        Annotated[
            dict[str, Any] | Annotated[str, StringConstraints(max_length=MAX_GUIDED_CHARS)],
            served(type="object"),
        ]
        | None
    ) = None
    guided_regex: GuidedText | None = None
    guided_choice: (
        Annotated[list[str], Field(min_length=1, max_length=MAX_GUIDED_CHOICES)] | None
    ) = None
    guided_grammar: GuidedText | None = None  # Lark or GBNF (engine/grammar.py)
    structured_outputs: StructuredOutputs | None = None
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

    def wanted_prompt_logprobs(self) -> int | None:
        """The prompt's own logprobs (and how many likeliest tokens' beside); None: none."""
        return None

    def check_supported(self) -> None:
        if self.stream_options is not None and not self.stream:
            raise APIError(
                400, "stream_options is only allowed with stream=true.", param="stream_options"
            )


class ChatCompletionRequest(SamplingBody):
    prompt_field: ClassVar[str] = "messages"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[int, Field(ge=1), WHOLE] | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=MAX_TOP_LOGPROBS), WHOLE] | None = None
    # Tool calling (tools.py): the tools go to the chat template; tool_choice says whether
    # (and which) the model must call: "auto" needs the server's --tool-call-parser.
    tools: Annotated[list[ToolDef], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    # vLLM's: more variables for the chat template (Qwen3's enable_thinking, ...)
    chat_template_kwargs: dict[str, Any] | None = None
    # {"type": "text" | "json_object" | "json_schema", "json_schema": {"schema": ...}}
    response_format: dict[str, Any] | None = None

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
        if self.tool_choice not in (None, "none", "auto") and not self.tools:
            raise APIError(400, "tool_choice needs tools to choose from.", param="tool_choice")

    def chat(self) -> list[dict[str, Any]]:
        """Messages as the chat template takes them."""
        return [m.for_template() for m in self.messages]

    def template_tools(self) -> list[dict[str, Any]] | None:
        """The tools as chat templates take them (OpenAI's form)."""
        if not self.tools:
            return None
        return [t.model_dump(exclude_none=True) for t in self.tools]
