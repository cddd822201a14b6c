"""The images (deploy/Dockerfile, deploy/Dockerfile.cpu), read statically: what would break
them or make them unsafe. Nothing is built here (that needs a Docker daemon)."""

from __future__ import annotations

import argparse
import fnmatch
import re
import shlex
import tomllib
from pathlib import Path

import pytest

from tests.deploy.dockerfile import Dockerfile, Stage, expand, instructions, parse

ROOT = Path(__file__).resolve().parents[2]
GPU = ROOT / "deploy" / "Dockerfile"
CPU = ROOT / "deploy" / "Dockerfile.cpu"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SECRET_NAME = re.compile(r"TOKEN|KEY|PASSWORD|SECRET|CREDENTIAL", re.IGNORECASE)
# Only a version names an exact image: 12.8.1-devel-ubuntu24.04, 3.11.14-slim-bookworm.
EXACT_TAG = re.compile(r"^\d+\.\d+\.\d+[\w.-]*$")


def torch_spec() -> str:
    """The project's torch pin: the Makefile's TORCH_SPEC (`TORCH_SPEC ?= torch==2.13.0`)."""
    m = re.search(r"^TORCH_SPEC\s*\??=\s*(\S+)\s*$", (ROOT / "Makefile").read_text(), re.M)
    assert m, "the Makefile has no TORCH_SPEC"
    return m.group(1)


def pip_installs(df: Dockerfile) -> list[tuple[Stage, list[str]]]:
    """Each `pip install ...` of each RUN, as words (ARGs expanded), with its stage."""
    out = []
    for stage in df.stages:
        for run in stage.all("RUN"):
            for words in shell_commands(expand(run.args, stage.args())):
                if words[:2] == ["pip", "install"] or words[1:4] == ["-m", "pip", "install"]:
                    out.append((stage, words))
    return out


def shell_commands(text: str) -> list[list[str]]:
    """A shell line's simple commands, as words: split at && || ; | (quotes respected)."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    out: list[list[str]] = [[]]
    for token in lexer:
        if token in ("&&", "||", ";", "|"):
            out.append([])
        else:
            out[-1].append(token)
    return [words for words in out if words]


def requirement_name(word: str) -> str:
    return re.split(r"[\[=<>!~;]", word, maxsplit=1)[0].lower()


def cuda_version(image: str) -> str:
    m = re.match(r"nvidia/cuda:(\d+\.\d+)\.\d+-(devel|runtime|base)-(.+)$", image)
    assert m, f"not a pinned nvidia/cuda image: {image}"
    return m.group(1)


def cu_tag(cuda: str) -> str:
    """12.8 -> cu128, as PyTorch and flashinfer name their indexes."""
    major, minor = cuda.split(".")
    return f"cu{major}{minor}"


def uid_of(user: str, stage: Stage) -> int | None:
    """USER's uid: numeric, or that of a user the stage made with useradd --uid."""
    name = user.split(":")[0]
    if name.isdigit():
        return int(name)
    for run in stage.all("RUN"):
        m = re.search(rf"useradd\b[^&;]*(?:--uid|-u)[ =](\d+)[^&;]*\s{re.escape(name)}\b", run.args)
        if m:
            return int(m.group(1))
    return None


@pytest.fixture(params=[GPU, CPU], ids=["gpu", "cpu"])
def dockerfile(request: pytest.FixtureRequest) -> Dockerfile:
    return parse(request.param)


def test_the_reader_joins_continuations_and_drops_comments() -> None:
    text = (
        "# a comment\nFROM a:1.2.3 AS b\nRUN one \\\n    two \\\n# inside\n    three\n"
        'ENV A=1 B="x y"\nCMD ["tandem", "router"]\n'
    )
    found = instructions(text)
    assert [(i.keyword, i.args, i.line) for i in found] == [
        ("FROM", "a:1.2.3 AS b", 2),
        ("RUN", "one two three", 3),
        ("ENV", 'A=1 B="x y"', 7),
        ("CMD", '["tandem", "router"]', 8),
    ]
    assert found[2].pairs() == {"A": "1", "B": "x y"}
    assert found[3].exec_form() == ["tandem", "router"]
    assert expand("v${X} $X $Y", {"X": "1"}) == "v1 1 $Y"


def test_every_base_image_is_pinned_to_an_exact_version(dockerfile: Dockerfile) -> None:
    names: set[str] = set()
    for stage in dockerfile.stages:
        if stage.base in names:  # an earlier stage of this file
            continue
        image = stage.base.split("@")[0]
        assert ":" in image.rsplit("/", 1)[-1], f"{stage.base}: no tag"
        tag = image.rsplit(":", 1)[1]
        assert tag != "latest" and EXACT_TAG.match(tag), f"{stage.base}: not an exact version"
        if stage.name:
            names.add(stage.name)
    assert len(dockerfile.stages) >= 2, "multi-stage: build tools stay out of the image"


def test_gpu_build_and_runtime_bases_are_one_cuda_version() -> None:
    df = parse(GPU)
    builder, final = df.stages[0], df.final
    assert "-devel-" in builder.base and "-runtime-" in final.base
    assert cuda_version(builder.base) == cuda_version(final.base)
    assert builder.base.split("-", 2)[2] == final.base.split("-", 2)[2]  # same OS
    # torch's wheels and flashinfer's kernel cache are built for that CUDA too.
    tag = cu_tag(cuda_version(final.base))
    indexes = re.findall(r"https://[^\s\"']+/whl/(cu\d+)", " ".join(df.runs()))
    assert indexes and set(indexes) == {tag}, indexes


def test_torch_is_the_projects_pin_from_the_right_index(dockerfile: Dockerfile) -> None:
    spec = torch_spec()
    pins = []
    for _stage, words in pip_installs(dockerfile):
        torch_words = [w for w in words if requirement_name(w) == "torch"]
        assert all(w == spec for w in torch_words), f"torch not pinned to {spec}: {words}"
        pins += torch_words
        if torch_words and "--index-url" in words:
            index = words[words.index("--index-url") + 1]
            want = "/whl/cpu" if dockerfile.path == CPU else "/whl/cu"
            assert want in index, f"torch from {index}"
    assert pins, "torch is installed nowhere: pip would pick any build"
    first = next(w for _s, w in pip_installs(dockerfile) if spec in w)
    assert "--index-url" in first, "torch's first install must name PyTorch's index"


def test_flashinfer_and_its_kernel_cache_are_one_version() -> None:
    versions = {}
    for _stage, words in pip_installs(parse(GPU)):
        for w in words:
            if requirement_name(w) in ("flashinfer-python", "flashinfer-jit-cache"):
                name, _, version = w.partition("==")
                assert version and "$" not in version, f"{w}: not pinned"
                versions[name] = version
    assert versions.keys() == {"flashinfer-python", "flashinfer-jit-cache"}
    assert len(set(versions.values())) == 1, versions


def test_the_final_stage_runs_as_uid_1000(dockerfile: Dockerfile) -> None:
    final = dockerfile.final
    users = final.all("USER")
    assert users, "no USER in the final stage: the image runs as root"
    last_user = users[-1]
    starts = [i for i in final.instructions if i.keyword in ("ENTRYPOINT", "CMD")]
    assert starts and all(i.line > last_user.line for i in starts)
    assert uid_of(last_user.args, final) == 1000, last_user.args
    # A numeric USER lets Kubernetes' runAsNonRoot check it without running the image.
    assert last_user.args.split(":")[0].isdigit()
    made = " ".join(i.args for i in final.all("RUN"))
    assert re.search(r"useradd\b.*--uid 1000\b.*\btandem\b", made), "no tandem user (uid 1000)"


def test_entrypoint_is_the_tandem_script(dockerfile: Dockerfile) -> None:
    [entry] = dockerfile.final.all("ENTRYPOINT")
    argv = entry.exec_form()
    assert argv == ["tandem"], "exec form, so signals reach tandem (drain on SIGTERM)"
    assert argv[0] in PYPROJECT["project"]["scripts"]


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [sub] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_cmd_is_a_real_tandem_command_line(
    dockerfile: Dockerfile, capsys: pytest.CaptureFixture[str]
) -> None:
    from services.cli import build_parser

    [cmd] = dockerfile.final.all("CMD")
    argv = cmd.exec_form()
    assert argv, "CMD in exec form: the arguments of ENTRYPOINT"
    parser = build_parser()
    assert argv[0] in subcommands(parser), f"tandem has no subcommand {argv[0]!r}"
    try:
        parser.parse_args(argv)
    except SystemExit as e:  # --help prints and exits 0; a bad flag exits 2
        assert e.code == 0, capsys.readouterr().err


def test_no_secret_is_baked_in(dockerfile: Dockerfile) -> None:
    for stage in dockerfile.stages:
        for i in stage.all("ENV") + stage.all("ARG"):
            for name, value in i.pairs().items():
                assert not (SECRET_NAME.search(name) and value), f"line {i.line}: {name}"
        for i in stage.all("COPY") + stage.all("ADD"):
            for src in [w for w in shlex.split(i.args) if not w.startswith("--")][:-1]:
                name = Path(src).name
                assert not (name == ".env" or name.endswith(".env") or "id_" in name), src
    text = dockerfile.path.read_text()
    assert "HF_TOKEN=" not in text and "HUGGING_FACE_HUB_TOKEN" not in text


def dockerignore() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def test_dockerignore_keeps_venvs_git_and_results_out() -> None:
    patterns = dockerignore()
    for must in (".venv", ".git", ".bench-venvs", "bench-results", "tests"):
        assert must in patterns, must


def ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for plain folder and file patterns: a path is out when it or a
    folder above it matches (the last matching pattern wins; `!` brings back)."""
    parts = Path(path).parts
    out = False
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern.lstrip("!").strip("/")
        prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
        if any(
            fnmatch.fnmatch(p, pat) or fnmatch.fnmatch(p, pat.replace("**/", "")) for p in prefixes
        ):
            out = not negate
    return out


def test_what_copy_takes_is_in_the_repo_and_in_the_build_context(dockerfile: Dockerfile) -> None:
    patterns = dockerignore()
    for stage in dockerfile.stages:
        for i in stage.all("COPY") + stage.all("ADD"):
            words = shlex.split(i.args)
            if any(w.startswith("--from") for w in words):
                continue
            for src in [w for w in words if not w.startswith("--")][:-1]:
                matches = list(ROOT.glob(src))
                assert matches, f"{dockerfile.path.name}:{i.line}: {src} is not in the repo"
                assert not ignored(src, patterns), f"{src} is left out by .dockerignore"


def test_the_wheel_ships_every_kernel_source() -> None:
    """The images `pip install .` (a wheel, not the source tree): the CPU kernels are built
    on first use from engine/kernels/csrc, so package-data must ship every file there."""
    shipped = PYPROJECT["tool"]["setuptools"]["package-data"]["engine.kernels"]
    csrc = sorted((ROOT / "engine" / "kernels" / "csrc").iterdir())
    missing = [
        p.name for p in csrc if not any(fnmatch.fnmatch(f"csrc/{p.name}", g) for g in shipped)
    ]
    assert not missing, f"not in the wheel: {missing}"


def test_the_venv_and_the_image_run_the_same_python(dockerfile: Dockerfile) -> None:
    runs = " ".join(dockerfile.runs())
    python = "python3.11" if dockerfile.path == CPU else "python3.12"
    # The venv is made by that Python, and the final stage has the same one to run it.
    assert f"{python} -m venv" in runs or (
        dockerfile.path == CPU and all(s.base.startswith("python:3.11.") for s in dockerfile.stages)
    )
    if dockerfile.path == GPU:
        final_runs = " ".join(i.args for i in dockerfile.final.all("RUN"))
        assert python in final_runs


def test_labels_say_source_license_and_version(dockerfile: Dockerfile) -> None:
    labels: dict[str, str | None] = {}
    for i in dockerfile.final.all("LABEL"):
        labels.update(i.pairs())
    prefix = "org.opencontainers.image."
    assert labels[prefix + "version"] == PYPROJECT["project"]["version"]
    license = PYPROJECT["project"]["license"]  # a table ({text = ...}) or, PEP 639, a string
    assert labels[prefix + "licenses"] == (license if isinstance(license, str) else license["text"])
    assert prefix + "source" in labels


def test_models_go_where_the_engine_looks_for_them(dockerfile: Dockerfile) -> None:
    assert 'os.environ.get("TANDEM_MODEL_CACHE")' in (ROOT / "engine" / "env.py").read_text()
    env: dict[str, str | None] = {}
    for i in dockerfile.final.all("ENV"):
        env.update(i.pairs())
    cache = env["TANDEM_MODEL_CACHE"]
    assert cache
    # The default model is baked in, pulled as the user who reads it, outside any volume
    # (a mount there would hide it).
    final = dockerfile.final.instructions
    pull = next(i for i in final if i.keyword == "RUN" and "tandem models pull" in i.args)
    assert any(i.keyword == "USER" and i.line < pull.line for i in final)
    assert "load_tokenizer(" in pull.args  # its tokenizer cache too: none is written later
    volumes = [v.args.strip() for v in dockerfile.final.all("VOLUME")]
    assert not any(cache.startswith(v + "/") for v in volumes)
    if dockerfile.path == GPU:  # other models on the volume, transformers' cache there too
        assert volumes == ["/models"]
        assert (env["HF_HOME"] or "").startswith("/models/")
    else:
        assert not volumes
        assert not any("redis" in run for run in dockerfile.runs()), "Redis runs beside it"
