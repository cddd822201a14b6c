"""Request bodies for /v1/completions and /v1/chat/completions, streaming with usage.

Fixed output lengths use vLLM's extensions: `ignore_eos` plus `min_tokens` = `max_tokens`
(servers that lack them: pass ignore_eos = false). A conversation's history goes to the
chat endpoint as messages; for /v1/completions it is rendered with the tokenizer's chat
template and sent as token ids. Whether a single prompt goes as ids or text was decided
when the dataset was built (see loadtest.datasets.base).
"""

from __future__ import annotations

from typing import Any

from loadtest.datasets import Prompt, TokenizerLike

Message = dict[str, str]
PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class BodyMaker:
    def __init__(
        self,
        endpoint: str,
        model: str,
        tokenizer: TokenizerLike,
        *,
        ignore_eos: bool,
        temperature: float,
        extra_body: dict[str, Any],
    ) -> None:
        self.endpoint, self.model, self.tokenizer = endpoint, model, tokenizer
        self.path = PATHS[endpoint]
        self._ignore_eos, self._temperature = ignore_eos, temperature
        self._extra = extra_body

    def single(self, prompt: Prompt, output_len: int) -> dict[str, Any]:
        if self.endpoint == "chat":
            text = prompt if isinstance(prompt, str) else self.tokenizer.decode(prompt)
            return self._body({"messages": [{"role": "user", "content": text}]}, output_len)
        return self._body(
            {"prompt": prompt if isinstance(prompt, str) else list(prompt)}, output_len
        )

    def conversation(self, messages: list[Message], output_len: int) -> dict[str, Any]:
        if self.endpoint == "chat":
            return self._body({"messages": messages}, output_len)
        # Always as ids: decoding would drop the template's special tokens.
        return self._body({"prompt": self.tokenizer.apply_chat_template(messages)}, output_len)

    def _body(self, content: dict[str, Any], output_len: int) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.model,
            **content,
            "max_tokens": output_len,
            "temperature": self._temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self._ignore_eos:
            body |= {"ignore_eos": True, "min_tokens": output_len}
        return body | self._extra
