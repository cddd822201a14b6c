"""The building blocks of the router's request bodies (protocol.py): strict parsing with
nulls as absent and no lone surrogates, whole floats as integers, marks for what the served
schema promises, and the constrained types the bodies share."""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from engine.sampling_params import MAX_STOP_CHARS, MAX_STOP_STRINGS
from services.router.unicode_check import has_lone_surrogate

INT64 = 2**63
UINT32 = 2**32  # max_tokens, top_k and min_tokens are uint32 on the wire


def _whole(value: Any) -> Any:
    # JSON has one kind of number, and to JSON Schema (so to the generated clients and
    # fuzzers that read ours) 2.0 is the integer 2: taken as one. 2.5 is still refused.
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole_items(value: Any) -> Any:
    """`_whole` over a list of integers at once: token id lists run to thousands of items,
    and a validator called on each cost the router ~0.1 us an item."""
    if isinstance(value, list) and float in set(map(type, value)):
        return [_whole(v) for v in value]
    return value


# Last in an Annotated integer, after its constraints (pydantic then still writes them into
# the schema as JSON Schema's minimum and maximum); WHOLE_ITEMS likewise on a list of them.
WHOLE = BeforeValidator(_whole)
WHOLE_ITEMS = BeforeValidator(_whole_items)


def served(**schema: Any) -> Any:
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
# No WHOLE of its own: TokenIds takes whole floats for the list at once (one call a list,
# not one an id), so a list of ids is always TokenIds.
TokenId = Annotated[int, Field(ge=0, lt=UINT32, json_schema_extra={BELOW_VOCAB: True})]
TokenIds = Annotated[list[TokenId], WHOLE_ITEMS]
TextPrompt = Annotated[str, served(minLength=1)]  # "" has no token to start from
IdsPrompt = Annotated[TokenIds, served(minItems=1)]


class Body(BaseModel):
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
