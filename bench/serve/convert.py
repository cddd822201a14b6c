"""The default GGUF as a bfloat16 Hugging Face folder that vLLM loads (run once, with the
project's .venv: it has transformers and gguf; the vLLM venv need not).

    python -m bench.serve.convert MODEL.gguf OUT_DIR
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

STAMP = ".stamp-converted"


def convert(gguf: Path, out: Path) -> Path:
    """`out` holding config, bfloat16 safetensors and the tokenizer; skipped when done."""
    if (out / STAMP).exists():
        return out
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16
    )
    if int(transformers.__version__.split(".")[0]) >= 5:
        # Loaded from GGUF it carries a quantizer that would refuse to save plain weights.
        model.hf_quantizer = None  # type: ignore[assignment]
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)
    # The saved config still names the GGUF quantization; the weights are plain bfloat16 now,
    # and vLLM would otherwise look for a .gguf file.
    cfg_path = out / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.pop("quantization_config", None)
    cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
    (out / STAMP).write_text(f"{gguf}\n")
    return out


if __name__ == "__main__":
    print(convert(Path(sys.argv[1]), Path(sys.argv[2])))
