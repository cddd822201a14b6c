"""Request fields other servers take that would change the answer and that Tandem does not
do yet (issue 15): refused with a 400 that names the field, never dropped.

A body's unknown fields are otherwise ignored (OpenAI's SDKs and UIs send fields a server
may not know: `user`, `metadata`, `store`, ...). These are the ones that are not
harmless: vLLM's sampling and decoding extensions, and OpenAI's tool and output options.
Each is accepted at its neutral value (what Tandem does anyway), so a client that always
sends the default, e.g. `length_penalty: 1.0` or `skip_special_tokens: true`, works.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from services.router.errors import APIError


def _absent(v: Any) -> bool:
    return v in (None, [], {}, "", False)


def _equals(neutral: Any) -> Callable[[Any], bool]:
    return lambda v: v is None or v == neutral


# field -> does this value change nothing?
NEUTRAL: Mapping[str, Callable[[Any], bool]] = {
    # vLLM's sampling parameters
    "length_penalty": _equals(1.0),
    "use_beam_search": _absent,
    "spaces_between_special_tokens": _equals(True),
    "bad_words": _absent,
    "allowed_token_ids": _absent,
    "prompt_logprobs": _absent,
    "truncate_prompt_tokens": _absent,
    "logits_processors": _absent,
    # vLLM's chat template and structured-output extensions
    "chat_template": _absent,
    "add_generation_prompt": _equals(True),
    "continue_final_message": _absent,
    # OpenAI's tool and output options
    "functions": _absent,
    "function_call": lambda v: v in (None, "none"),
    "prediction": _absent,
    "modalities": lambda v: v in (None, ["text"]),
    "audio": _absent,
    "web_search_options": _absent,
}


def refuse_unsupported(body: Any) -> None:
    """Raise the 400 for the first field of `body` (a request's JSON object) that Tandem
    would have to ignore to answer."""
    if not isinstance(body, Mapping):
        return
    for name, neutral in NEUTRAL.items():
        if name in body and not neutral(body[name]):
            raise APIError(
                400,
                f"{name} is not supported yet: leave it out (or send its default) rather "
                "than have it ignored.",
                param=name,
            )
