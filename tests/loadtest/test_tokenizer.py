"""loadtest's own tokenizer (no engine import), its check against the server's /tokenize, and
`tandem bench` supplying the default model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import pytest

from loadtest.cli import main as loadtest_main
from loadtest.scenario import PROBE, run_scenario
from loadtest.tokenizer import HFTokenizer, load_tokenizer
from services.cli import main as tandem_main
from tests.helpers.scripted_server import Script, ScriptedServer

CHAT = [{"role": "user", "content": "Hi there"}]
SMALL = {"input_len": 8, "output_len": 2, "num_prompts": 2}


def test_the_gguf_tokenizer_is_the_servers(tokenizer: HFTokenizer, smollm_path: Path) -> None:
    from engine.tokenizer import load_tokenizer as engine_tokenizer  # what the router runs

    server = engine_tokenizer(smollm_path)
    assert (tokenizer.vocab_size, tokenizer.eos_token_ids) == (
        server.vocab_size,
        server.eos_token_ids,
    )
    assert tokenizer.encode(PROBE) == server.encode(PROBE)
    assert tokenizer.decode(server.encode(PROBE)) == server.decode(server.encode(PROBE))
    assert tokenizer.apply_chat_template(CHAT) == server.apply_chat_template(CHAT)


def test_a_directory_and_a_tokenizer_json_load_too(tokenizer: HFTokenizer, tmp_path: Path) -> None:
    tokenizer._tok.save_pretrained(str(tmp_path))
    from_dir = load_tokenizer(tmp_path)
    assert from_dir.encode(PROBE) == tokenizer.encode(PROBE)
    assert from_dir.apply_chat_template(CHAT) == tokenizer.apply_chat_template(CHAT)
    bare = load_tokenizer(tmp_path / "tokenizer.json")  # the vocabulary alone
    assert bare.encode(PROBE) == tokenizer.encode(PROBE)
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template(CHAT)
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.gguf")


def test_no_tokenizer_is_an_error_naming_the_flag(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="--tokenizer"):
        run_scenario(SMALL, "http://127.0.0.1:9")
    assert loadtest_main(["run", "--url", "http://127.0.0.1:9", "--quiet"]) == 2
    assert "--tokenizer" in capsys.readouterr().err


@pytest.mark.parametrize("agrees", [True, False])
def test_a_server_that_tokenizes_otherwise_is_warned_of(
    tokenizer: HFTokenizer, agrees: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    theirs = tokenizer.encode if agrees else (lambda text: [1, 2, 3])
    with ScriptedServer(Script(ttft=0.01, itl=0.01, tokenize=theirs)) as srv:
        res = run_scenario(SMALL, srv.url, tokenizer=tokenizer)
    assert res.overall.completed == 2
    (body,) = srv.seen.tokenized
    assert body == {"model": "scripted", "prompt": PROBE, "add_special_tokens": False}
    assert ("tokenizes otherwise" in capsys.readouterr().err) is not agrees


def test_tandem_bench_passes_the_default_models_tokenizer(
    smollm_path: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ScriptedServer(Script(ttft=0.01, itl=0.01, tokenize=lambda text: [1])) as srv:
        argv = ["bench", "run", "--url", srv.url, "--num-prompts", "2", "--input-len", "8"]
        assert tandem_main([*argv, "--output-len", "2", "--quiet", "--out", str(tmp_path)]) == 0
    # The warning names the tokenizer it used: the pulled default model.
    assert f"otherwise than {smollm_path}" in capsys.readouterr().err
