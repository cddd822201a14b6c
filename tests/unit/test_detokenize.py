"""IncrementalText: text one token at a time, with stop strings held back until they are
settled (the router's, and `Engine.generate`'s)."""

from __future__ import annotations

from pathlib import Path

from engine.detokenize import DecodeStreamDecoder, IncrementalText
from engine.tokenizer import load_tokenizer


class FakeDecoder:
    """Each token id is a piece of UTF-8 bytes. As `DecodeStream` does, a token's text is
    released once the bytes so far end in a whole character; until then the pending bytes
    read as U+FFFD, as a real byte-level tokenizer decodes them."""

    def __init__(self, pieces: dict[int, str | bytes]) -> None:
        self.pieces = {
            k: v if isinstance(v, bytes) else v.encode("utf-8") for k, v in pieces.items()
        }
        self._pending = b""

    def step(self, token_id: int) -> str | None:
        self._pending += self.pieces[token_id]
        try:
            text = self._pending.decode("utf-8")
        except UnicodeDecodeError:
            return None
        self._pending = b""
        return text

    def pending(self) -> str:
        return self._pending.decode("utf-8", errors="replace")


def run(stream: IncrementalText, ids: list[int]) -> tuple[list[str], bool]:
    """Feed tokens one at a time, as the router does; return the emitted pieces (the final
    flush included) and whether a stop string was hit."""
    out: list[str] = []
    for n in range(1, len(ids) + 1):
        stopped = stream.add(ids[n - 1 : n])
        out.append(stream.take(final=stopped or n == len(ids)))
        if stopped:
            return out, True
    return out, False


def test_no_stop_strings_streams_everything() -> None:
    dec = FakeDecoder({1: "Hel", 2: "lo", 3: " world"})
    s = IncrementalText(dec)
    pieces, stopped = run(s, [1, 2, 3])
    assert pieces == ["Hel", "lo", " world"]
    assert not stopped and s.stopped_on is None
    assert s.text == "Hello world"


def test_stop_string_split_across_tokens_is_never_emitted() -> None:
    dec = FakeDecoder({1: "ab", 2: "E", 3: "N", 4: "D", 5: "zz"})
    s = IncrementalText(dec, ("END",))
    assert not s.add([1])
    assert s.take(False) == "ab"
    assert not s.add([2])
    assert s.take(False) == ""  # "E" could start "END"
    assert not s.add([3])
    assert s.take(False) == ""  # "EN" could start "END"
    assert s.add([4])
    assert s.stopped_on == "END"
    assert s.text == "ab"
    assert s.take(True) == ""
    assert s.emitted == 2


def test_text_after_stop_string_is_dropped() -> None:
    dec = FakeDecoder({1: "Hi", 2: " thereENDmore", 3: " and more"})
    s = IncrementalText(dec, ("END",))
    pieces, stopped = run(s, [1, 2, 3])
    assert stopped and s.stopped_on == "END"
    assert "".join(pieces) == "Hi there"
    assert s.text == "Hi there"


def test_held_back_text_released_when_not_a_stop() -> None:
    dec = FakeDecoder({1: "x", 2: "E", 3: "N", 4: "d", 5: "!"})
    s = IncrementalText(dec, ("END",))
    pieces, stopped = run(s, [1, 2, 3, 4, 5])
    assert not stopped
    assert pieces == ["x", "", "", "ENd", "!"]
    assert "".join(pieces) == "xENd!"


def test_final_flushes_held_back_text() -> None:
    dec = FakeDecoder({1: "ok", 2: "EN"})
    s = IncrementalText(dec, ("END",))
    s.add([1, 2])
    assert s.take(False) == "ok"
    assert s.take(True) == "EN"
    assert s.take(True) == ""
    assert s.emitted == 4


def test_earliest_of_several_stop_strings_wins() -> None:
    dec = FakeDecoder({1: "a", 2: "STOP then END"})
    s = IncrementalText(dec, ("END", "STOP"))
    pieces, stopped = run(s, [1, 2])
    assert stopped and s.stopped_on == "STOP"
    assert "".join(pieces) == "a"


def test_longest_stop_prefix_held_back() -> None:
    # "xAB" ends with "AB" (prefix of "ABC") and "B" (prefix of "BQ"): hold back 2.
    dec = FakeDecoder({1: "xAB"})
    s = IncrementalText(dec, ("ABC", "BQ"))
    s.add([1])
    assert s.take(False) == "x"


def test_stop_string_in_the_first_token() -> None:
    dec = FakeDecoder({1: "END"})
    s = IncrementalText(dec, ("END",))
    assert s.add([1])
    assert s.text == "" and s.take(True) == ""


def test_stop_string_spanning_emitted_and_new_text() -> None:
    # "E" is held back, then "ND" completes the stop on the next token.
    dec = FakeDecoder({1: "abcE", 2: "NDxyz"})
    s = IncrementalText(dec, ("END",))
    pieces, stopped = run(s, [1, 2])
    assert stopped
    assert pieces == ["abc", ""]


def test_trailing_replacement_char_held_until_completed() -> None:
    # "€" is b"\xe2\x82\xac", split over two tokens.
    dec = FakeDecoder({1: "a", 2: b"\xe2\x82", 3: b"\xac", 4: "b"})
    s = IncrementalText(dec)
    s.add([1, 2])
    assert s.text == "a\ufffd"
    assert s.take(False) == "a"
    s.add([3])
    assert s.take(False) == "\u20ac"
    s.add([4])
    assert s.take(True) == "b"
    assert s.emitted == 3


def test_four_byte_character_over_three_tokens() -> None:
    emoji = "\U0001f600".encode()
    dec = FakeDecoder({1: emoji[:1], 2: emoji[1:3], 3: emoji[3:]})
    s = IncrementalText(dec, ("zz",))
    pieces, _ = run(s, [1, 2, 3])
    assert pieces == ["", "", "\U0001f600"]
    assert "\ufffd" not in "".join(pieces)


def test_replacement_char_is_flushed_when_final() -> None:
    dec = FakeDecoder({1: "a", 2: b"\xe2\x82"})
    s = IncrementalText(dec)
    s.add([1, 2])
    assert s.take(False) == "a"
    assert s.take(True) == "\ufffd"


def test_stop_string_after_multibyte_character() -> None:
    dec = FakeDecoder({1: b"\xe2\x82", 2: b"\xacEN", 3: "D!"})
    s = IncrementalText(dec, ("END",))
    pieces, stopped = run(s, [1, 2, 3])
    assert stopped
    assert "".join(pieces) == "\u20ac"


def test_stop_prefix_before_incomplete_character_is_not_emitted() -> None:
    # stop = "A€"; the "€" arrives split across two tokens.
    dec = FakeDecoder({1: "xA", 2: b"\xe2\x82", 3: b"\xac"})
    s = IncrementalText(dec, ("A\u20ac",))
    pieces, stopped = run(s, [1, 2, 3])
    assert stopped and s.stopped_on == "A\u20ac"
    assert "".join(pieces) == "x"  # no part of the stop string may be emitted


def test_emitted_text_is_prefix_of_full_text_without_stops() -> None:
    pieces_map: dict[int, str | bytes] = {
        1: "The ",
        2: "qu",
        3: "ick ",
        4: b"\xc3",
        5: b"\xa9",
        6: " fox",
    }
    dec = FakeDecoder(pieces_map)
    s = IncrementalText(dec, ("qui!", "fox!"))
    ids = [1, 2, 3, 4, 5, 6]
    pieces = []
    for n in range(1, len(ids) + 1):
        assert not s.add(ids[n - 1 : n])
        pieces.append(s.take(False))
        assert s.text.startswith("".join(pieces))
    # "qu" was held after token 2 (could become "qui!"), the lone byte after token 4,
    # and "fox" at the end (could become "fox!").
    assert pieces == ["The ", "", "quick ", "", "\u00e9", " "]
    assert s.take(True) == "fox"
    assert s.text == "The quick \u00e9 fox"


def test_include_stop_ends_the_text_with_the_stop_string() -> None:
    # vLLM's include_stop_str_in_output: the stop string split over tokens, text after it
    dec = FakeDecoder({1: "abcE", 2: "NDxyz"})
    s = IncrementalText(dec, ("END",), include_stop=True)
    pieces, stopped = run(s, [1, 2])
    assert stopped and s.stopped_on == "END"
    assert "".join(pieces) == "abcEND" and pieces[0] == "abc"  # still held back until settled


def test_special_tokens_are_in_the_text_only_when_asked(smollm_path: Path) -> None:
    tok = load_tokenizer(smollm_path)
    ids = tok.encode("Hi") + [tok.eos_token_ids[0]] + tok.encode(" there")
    for skip, want in ((True, "Hi there"), (False, "Hi<|im_end|> there")):
        s = IncrementalText(DecodeStreamDecoder(tok.backend, skip_special_tokens=skip))
        pieces, _ = run(s, ids)
        assert "".join(pieces) == want
