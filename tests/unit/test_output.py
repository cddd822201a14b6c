"""TextStream: incremental text with stop strings held back until they are settled."""

from __future__ import annotations

from collections.abc import Sequence

from engine.output import TextStream


class FakeDecoder:
    """Each token id is a piece of UTF-8 bytes; decoding joins them and replaces bytes of an
    incomplete character with U+FFFD, as a real byte-level tokenizer does."""

    def __init__(self, pieces: dict[int, str | bytes]) -> None:
        self.pieces = {
            k: v if isinstance(v, bytes) else v.encode("utf-8") for k, v in pieces.items()
        }

    def decode(self, ids: Sequence[int]) -> str:
        return b"".join(self.pieces[i] for i in ids).decode("utf-8", errors="replace")


def run(stream: TextStream, ids: list[int]) -> tuple[list[str], bool]:
    """Feed tokens one at a time, as the engine does; return the emitted pieces (the final
    flush included) and whether a stop string was hit."""
    out: list[str] = []
    for n in range(1, len(ids) + 1):
        stopped = stream.update(ids[:n])
        out.append(stream.take(final=stopped or n == len(ids)))
        if stopped:
            return out, True
    return out, False


def test_no_stop_strings_streams_everything() -> None:
    dec = FakeDecoder({1: "Hel", 2: "lo", 3: " world"})
    s = TextStream(dec)
    pieces, stopped = run(s, [1, 2, 3])
    assert pieces == ["Hel", "lo", " world"]
    assert not stopped and s.stopped_on is None
    assert s.text == "Hello world"


def test_stop_string_split_across_tokens_is_never_emitted() -> None:
    dec = FakeDecoder({1: "ab", 2: "E", 3: "N", 4: "D", 5: "zz"})
    s = TextStream(dec, ("END",))
    assert not s.update([1])
    assert s.take(False) == "ab"
    assert not s.update([1, 2])
    assert s.take(False) == ""  # "E" could start "END"
    assert not s.update([1, 2, 3])
    assert s.take(False) == ""  # "EN" could start "END"
    assert s.update([1, 2, 3, 4])
    assert s.stopped_on == "END"
    assert s.text == "ab"
    assert s.take(True) == ""
    assert s.emitted == 2


def test_text_after_stop_string_is_dropped() -> None:
    dec = FakeDecoder({1: "Hi", 2: " thereENDmore", 3: " and more"})
    s = TextStream(dec, ("END",))
    pieces, stopped = run(s, [1, 2, 3])
    assert stopped and s.stopped_on == "END"
    assert "".join(pieces) == "Hi there"
    assert s.text == "Hi there"


def test_held_back_text_released_when_not_a_stop() -> None:
    dec = FakeDecoder({1: "x", 2: "E", 3: "N", 4: "d", 5: "!"})
    s = TextStream(dec, ("END",))
    pieces, stopped = run(s, [1, 2, 3, 4, 5])
    assert not stopped
    assert pieces == ["x", "", "", "ENd", "!"]
    assert "".join(pieces) == "xENd!"


def test_final_flushes_held_back_text() -> None:
    dec = FakeDecoder({1: "ok", 2: "EN"})
    s = TextStream(dec, ("END",))
    s.update([1, 2])
    assert s.take(False) == "ok"
    assert s.take(True) == "EN"
    assert s.take(True) == ""
    assert s.emitted == 4


def test_earliest_of_several_stop_strings_wins() -> None:
    dec = FakeDecoder({1: "a", 2: "STOP then END"})
    s = TextStream(dec, ("END", "STOP"))
    pieces, stopped = run(s, [1, 2])
    assert stopped and s.stopped_on == "STOP"
    assert "".join(pieces) == "a"


def test_longest_stop_prefix_held_back() -> None:
    # "xAB" ends with "AB" (prefix of "ABC") and "B" (prefix of "BQ"): hold back 2.
    dec = FakeDecoder({1: "xAB"})
    s = TextStream(dec, ("ABC", "BQ"))
    s.update([1])
    assert s.take(False) == "x"


def test_stop_string_in_the_first_token() -> None:
    dec = FakeDecoder({1: "END"})
    s = TextStream(dec, ("END",))
    assert s.update([1])
    assert s.text == "" and s.take(True) == ""


def test_stop_string_spanning_emitted_and_new_text() -> None:
    # "E" is held back, then "ND" completes the stop on the next token.
    dec = FakeDecoder({1: "abcE", 2: "NDxyz"})
    s = TextStream(dec, ("END",))
    pieces, stopped = run(s, [1, 2])
    assert stopped
    assert pieces == ["abc", ""]


def test_trailing_replacement_char_held_until_completed() -> None:
    # "€" is b"\xe2\x82\xac", split over two tokens.
    dec = FakeDecoder({1: "a", 2: b"\xe2\x82", 3: b"\xac", 4: "b"})
    s = TextStream(dec)
    s.update([1, 2])
    assert s.text == "a\ufffd"
    assert s.take(False) == "a"
    s.update([1, 2, 3])
    assert s.take(False) == "\u20ac"
    s.update([1, 2, 3, 4])
    assert s.take(True) == "b"
    assert s.emitted == 3


def test_four_byte_character_over_three_tokens() -> None:
    emoji = "\U0001f600".encode()
    dec = FakeDecoder({1: emoji[:1], 2: emoji[1:3], 3: emoji[3:]})
    s = TextStream(dec, ("zz",))
    pieces, _ = run(s, [1, 2, 3])
    assert pieces == ["", "", "\U0001f600"]
    assert "\ufffd" not in "".join(pieces)


def test_replacement_char_is_flushed_when_final() -> None:
    dec = FakeDecoder({1: "a", 2: b"\xe2\x82"})
    s = TextStream(dec)
    s.update([1, 2])
    assert s.take(False) == "a"
    assert s.take(True) == "\ufffd"


def test_stop_string_after_multibyte_character() -> None:
    dec = FakeDecoder({1: b"\xe2\x82", 2: b"\xacEN", 3: "D!"})
    s = TextStream(dec, ("END",))
    pieces, stopped = run(s, [1, 2, 3])
    assert stopped
    assert "".join(pieces) == "\u20ac"


def test_stop_prefix_before_incomplete_character_is_not_emitted() -> None:
    # stop = "A€"; the "€" arrives split across two tokens.
    dec = FakeDecoder({1: "xA", 2: b"\xe2\x82", 3: b"\xac"})
    s = TextStream(dec, ("A\u20ac",))
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
    s = TextStream(dec, ("qui!", "fox!"))
    ids = [1, 2, 3, 4, 5, 6]
    pieces = []
    for n in range(1, len(ids) + 1):
        assert not s.update(ids[:n])
        pieces.append(s.take(False))
        assert s.text.startswith("".join(pieces))
    # "qu" was held after token 2 (could become "qui!"), the lone byte after token 4,
    # and "fox" at the end (could become "fox!").
    assert pieces == ["The ", "", "quick ", "", "\u00e9", " "]
    assert s.take(True) == "fox"
    assert s.text == "The quick \u00e9 fox"
