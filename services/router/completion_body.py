"""The body of /v1/completions (OpenAI's legacy API): one prompt or a list, as text or
token ids, `logprobs` as an integer, `echo`; the sampling fields it shares with chat are
protocol.py's `SamplingBody`."""

from __future__ import annotations

from typing import Annotated, ClassVar

from pydantic import Field

from services.router.body_types import WHOLE, IdsPrompt, TextPrompt, served
from services.router.errors import APIError
from services.router.protocol import MAX_PROMPTS, SamplingBody


class CompletionRequest(SamplingBody):
    prompt_field: ClassVar[str] = "prompt"
    # One prompt (text or token ids), or a list of either: a choice each (choices.py).
    prompt: (
        TextPrompt
        | IdsPrompt
        | Annotated[list[TextPrompt], Field(min_length=1, max_length=MAX_PROMPTS)]
        | Annotated[list[IdsPrompt], Field(min_length=1, max_length=MAX_PROMPTS)]
    )
    # the chosen token's logprob, and the k likeliest tokens' (OpenAI's legacy bound: 5)
    logprobs: Annotated[int, Field(ge=0, le=5), WHOLE] | None = None
    echo: bool = False  # the prompt ahead of the completion (echo.py), logprobs and all
    best_of: Annotated[int, served(minimum=1, maximum=1), WHOLE] | None = None
    suffix: Annotated[str, served(maxLength=0)] | None = None

    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    def wanted_top_logprobs(self) -> int:
        return self.logprobs or 0

    def wanted_prompt_logprobs(self) -> int | None:
        return self.logprobs if self.echo else None

    def check_supported(self) -> None:
        super().check_supported()
        if self.best_of not in (None, 1):
            raise APIError(400, "Only best_of=1 is supported.", param="best_of")
        if self.suffix:
            raise APIError(400, "suffix is not supported.", param="suffix")

    def prompts(self) -> list[str | list[int]]:
        p = self.prompt
        if isinstance(p, str) or not p or isinstance(p[0], int):
            return [p]  # type: ignore[list-item]  # one prompt ([] is refused as empty)
        return list(p)
