"""What a caller may ask of one generation. Validated once, here."""

from __future__ import annotations

from dataclasses import dataclass, replace

_UINT32, _UINT64 = 2**32, 2**64  # what the wire (proto/worker.proto) carries
# Stop strings are searched after every token, and each one's prefixes are held to catch a
# match split across tokens (memory and time grow with the square of a string's length):
# bounded so that no request can buy seconds per token. OpenAI takes 4 strings; code
# completion clients send a dozen or more.
MAX_STOP_STRINGS = 32
MAX_STOP_CHARS = 256
# A temperature above 0 and below this is refused: the sampler divides the logits by it, a
# float32 overflows to inf, and the draw then fails inside the engine's step (one request
# would stop a worker). The router sends such a temperature as 0, greedy, as vLLM treats
# those below 1e-5. A power of two, so a value at or above it stays so as the wire's float32.
MIN_TEMPERATURE = 2.0**-16
# logit_bias entries a request may carry (OpenAI documents a map of token ids to -100..100;
# each entry costs an add per step): the bound keeps a body from buying work per token.
MAX_LOGIT_BIAS = 1024
# A repetition penalty divides logits by it: one near 0 would overflow float32 to inf (and
# a sampled draw then fails inside the step). Any penalty below this one already makes a
# seen token's logit certain or impossible; a power of two, exact as the wire's float32.
MIN_REPETITION_PENALTY = 2.0**-16
MAX_STOP_TOKEN_IDS = 1024
MAX_TOP_LOGPROBS = (
    20  # OpenAI's bound  # a set lookup per token, but a body should not carry millions
)


GUIDED_KINDS = ("json_schema", "json_object", "regex", "choice", "grammar")
MAX_GUIDED_CHARS = 65536  # a schema, regex, grammar or list of choices: compiled per request


@dataclass(frozen=True, slots=True)
class GuidedSpec:
    """Structured output (engine/guided.py): JSON of a schema (`spec`: the schema as JSON
    text), any JSON object, text matching a regex, one of a list of strings (`spec`: a
    JSON list of them), or text of a context-free grammar (`spec`: Lark, as llguidance
    reads it, or GBNF, as llama.cpp and xgrammar write it).

    `after`: token ids that must appear in the output before the grammar applies (a
    reasoning model's end of thinking, as vLLM holds the grammar until the thinking ends);
    empty: it applies from the first output token."""

    kind: str
    spec: str = ""
    after: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if self.kind not in GUIDED_KINDS:
            raise ValueError(
                f"guided kind must be one of {', '.join(GUIDED_KINDS)}, got {self.kind!r}"
            )
        if len(self.spec) > MAX_GUIDED_CHARS:
            raise ValueError(f"a guided spec takes at most {MAX_GUIDED_CHARS} characters")


@dataclass(frozen=True, slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 0.0  # 0 means greedy
    top_k: int = 0  # 0 means off
    top_p: float = 1.0
    seed: int | None = None  # same seed, same output
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False
    min_tokens: int = 0
    logprobs: bool = False  # logprob of each chosen token
    top_logprobs: int = 0  # and of the k likeliest tokens at each position (implies logprobs)
    # vLLM's and OpenAI's logit changes (engine/logit_adjust.py says how each applies)
    presence_penalty: float = 0.0  # [-2, 2]
    frequency_penalty: float = 0.0  # [-2, 2]
    repetition_penalty: float = 1.0  # [2**-16, 2]; 1 is off
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias in [-100, 100])
    min_p: float = 0.0  # [0, 1]: drop tokens below min_p x the likeliest one's probability
    guided: GuidedSpec | None = None  # structured output: the grammar its tokens must follow
    # the logprob of each prompt token after the first, given the ones before it, and the
    # k likeliest tokens' there (k = this; 0: none); None: not asked (completions' echo)
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        # Normalise so callers may pass lists.
        object.__setattr__(self, "stop", tuple(self.stop))
        object.__setattr__(self, "stop_token_ids", tuple(self.stop_token_ids))
        if self.top_logprobs:
            object.__setattr__(self, "logprobs", True)
        # one entry per token (the last given wins, as in a dict), in id order: equal
        # biases compare equal however they were given
        bias = dict(self.logit_bias)
        object.__setattr__(
            self, "logit_bias", tuple(sorted((int(t), float(b)) for t, b in bias.items()))
        )
        if self.seed is not None:
            # torch.Generator.manual_seed reads a negative seed modulo 2**64 (-1 is
            # 2**64 - 1): so do we, and OpenAI's signed seeds fit the wire's uint64
            object.__setattr__(self, "seed", self.seed % _UINT64)
        if not 1 <= self.max_tokens < _UINT32:
            raise ValueError(f"max_tokens must be in [1, 2**32), got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 2.0 or self.temperature != self.temperature:
            raise ValueError(f"temperature must be in [0, 2], got {self.temperature}")
        if 0.0 < self.temperature < MIN_TEMPERATURE:
            raise ValueError(
                f"temperature must be 0 (greedy) or at least {MIN_TEMPERATURE}, "
                f"got {self.temperature}"
            )
        if not 0 <= self.top_k < _UINT32:
            raise ValueError(f"top_k must be in [0, 2**32) (0 = off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ValueError(
                f"min_tokens must be in [0, max_tokens={self.max_tokens}], got {self.min_tokens}"
            )
        if len(self.stop) > MAX_STOP_STRINGS:
            raise ValueError(f"stop takes at most {MAX_STOP_STRINGS} strings, got {len(self.stop)}")
        if any(not 0 < len(s) <= MAX_STOP_CHARS for s in self.stop):
            raise ValueError(f"stop strings must be 1 to {MAX_STOP_CHARS} characters long")
        if len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise ValueError(f"stop_token_ids takes at most {MAX_STOP_TOKEN_IDS} ids")
        if any(not 0 <= t < _UINT32 for t in self.stop_token_ids):
            raise ValueError("stop_token_ids must be token ids (in [0, 2**32))")
        if not 0 <= self.top_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(
                f"top_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.top_logprobs}"
            )
        if self.prompt_logprobs is not None and not 0 <= self.prompt_logprobs <= MAX_TOP_LOGPROBS:
            raise ValueError(
                f"prompt_logprobs must be in [0, {MAX_TOP_LOGPROBS}], got {self.prompt_logprobs}"
            )
        self._check_logit_changes()

    def _check_logit_changes(self) -> None:
        for name in ("presence_penalty", "frequency_penalty"):
            value = getattr(self, name)
            if not -2.0 <= value <= 2.0:  # also refuses NaN
                raise ValueError(f"{name} must be in [-2, 2], got {value}")
        if not MIN_REPETITION_PENALTY <= self.repetition_penalty <= 2.0:
            raise ValueError(
                f"repetition_penalty must be in [2**-16, 2], got {self.repetition_penalty}"
            )
        if not 0.0 <= self.min_p <= 1.0:
            raise ValueError(f"min_p must be in [0, 1], got {self.min_p}")
        if len(self.logit_bias) > MAX_LOGIT_BIAS:
            raise ValueError(
                f"logit_bias takes at most {MAX_LOGIT_BIAS} tokens, got {len(self.logit_bias)}"
            )
        if any(not 0 <= t < _UINT32 for t, _ in self.logit_bias):
            raise ValueError("logit_bias keys must be token ids (in [0, 2**32))")
        if any(not -100.0 <= b <= 100.0 for _, b in self.logit_bias):
            raise ValueError("logit_bias values must be in [-100, 100]")

    def remaining(self, generated: int) -> SamplingParams:
        """What is left to ask once `generated` tokens are out: a request resumed on another
        worker generates only the rest. (A seeded sample then draws afresh: only greedy
        output continues exactly as it would have.)"""
        if not 0 <= generated < self.max_tokens:
            raise ValueError(
                f"max_tokens must exceed the tokens already generated ({generated}), "
                f"got {self.max_tokens}"
            )
        return replace(
            self,
            max_tokens=self.max_tokens - generated,
            min_tokens=max(0, self.min_tokens - generated),
        )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def penalized(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty) or (
            self.repetition_penalty != 1.0
        )
