"""What one request measured. Times are `time.perf_counter()` seconds; offsets are seconds
after the request was sent."""

from __future__ import annotations

from dataclasses import dataclass, field

# Error categories (RequestOutput.category); an HTTP error is "http_<status>".
TIMEOUT = "timeout"  # the per-request timeout ran out
CONNECTION = "connection"  # no response: refused, reset before the headers, DNS
STREAM = "stream"  # the stream broke: an error event, a dropped connection, no [DONE]
EMPTY = "empty"  # the stream ended without any text


@dataclass(slots=True)
class RequestOutput:
    workload: str
    start: float = 0.0  # when it was sent
    end: float = 0.0  # its last byte, or its failure
    input_len: int = 0  # prompt tokens: the server's usage count, else the dataset's
    output_len: int = 0  # generated tokens: the server's usage count, else our own count
    ttft: float = 0.0  # offset of the first chunk that carried text
    chunk_times: list[float] = field(default_factory=list)  # offsets of chunks with text
    chunk_texts: list[str] = field(default_factory=list)
    usage_output_tokens: int | None = None  # as the server reported it
    chunk_tokens: list[int] = field(default_factory=list)  # tokens per chunk (see itl.py)
    itls: list[float] = field(default_factory=list)  # one per token after the first
    error: str = ""  # empty when it succeeded
    category: str = ""

    @property
    def success(self) -> bool:
        return not self.error

    @property
    def generated_text(self) -> str:
        return "".join(self.chunk_texts)

    @property
    def e2el(self) -> float:
        return self.end - self.start

    @property
    def tpot(self) -> float | None:
        """(E2E - TTFT) / (output tokens - 1): undefined for one token."""
        if self.output_len < 2:
            return None
        return (self.e2el - self.ttft) / (self.output_len - 1)

    def fail(self, category: str, error: str) -> None:
        self.category, self.error = category, error or category
