"""Reference outputs from Hugging Face transformers: the yardstick we did not write."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from engine.sampling_params import SamplingParams


def build_tiny_checkpoint(
    kind: str, path: Path, vocab_size: int = 512, seed: int = 0, **overrides: int
) -> Path:
    """Save a small random-weight model with save_pretrained. Weights are drawn wider than
    the default init so the next-token distribution has clear winners (near-ties would make
    greedy comparisons fragile for reasons that have nothing to do with correctness)."""
    from transformers import (
        LlamaConfig,
        LlamaForCausalLM,
        MiniMaxM2Config,
        MiniMaxM2ForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
        Qwen3Config,
        Qwen3ForCausalLM,
        Qwen3MoeConfig,
        Qwen3MoeForCausalLM,
    )

    common = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        initializer_range=0.15,
        tie_word_embeddings=False,
    )
    classes = {
        "llama": (LlamaConfig, LlamaForCausalLM, {}),
        "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
        "qwen3": (Qwen3Config, Qwen3ForCausalLM, {"head_dim": 24}),
        # 8 experts of which 2 a token, renormalised; layer 1 dense (mlp_only_layers)
        "qwen3_moe": (
            Qwen3MoeConfig,
            Qwen3MoeForCausalLM,
            {
                "head_dim": 24,
                "num_experts": 8,
                "num_experts_per_tok": 2,
                "moe_intermediate_size": 48,
                "norm_topk_prob": True,
                "mlp_only_layers": [1],
            },
        ),
        # 8 experts of intermediate_size, 2 a token by sigmoid score plus correction bias;
        # q and k normed across heads; RoPE on half of each head: `rotary_dim`, as the
        # Hub's config says it, and the same as a factor, the field transformers reads
        # (5.17 ignored `rotary_dim` and turned whole heads, so a reference built there
        # departed from the engine at the first token, on any device; 5.25 reads both)
        "minimax_m2": (
            MiniMaxM2Config,
            MiniMaxM2ForCausalLM,
            {
                "head_dim": 24,
                "rotary_dim": 12,
                "partial_rotary_factor": 0.5,
                "intermediate_size": 48,
                "num_local_experts": 8,
                "num_experts_per_tok": 2,
                "bos_token_id": 1,
                "eos_token_id": 2,
            },
        ),
    }
    cfg_cls, model_cls, extra = classes[kind]
    torch.manual_seed(seed)
    model = model_cls(cfg_cls(**(common | extra | overrides)))
    check_partial_rotary(model.config)
    if kind == "qwen2":  # Qwen2's q/k/v biases start at zero; make them count
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.1)
    if kind in ("qwen3_moe", "minimax_m2"):  # the router starts at zero (all experts tie)
        for layer in model.model.layers:
            for param in layer.mlp.parameters():
                torch.nn.init.normal_(param, std=0.15)
    if kind == "minimax_m2":  # a correction bias that changes which experts win
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.mlp.e_score_correction_bias, std=0.1)
    if kind in ("qwen3", "qwen3_moe", "minimax_m2"):
        for layer in model.model.layers:
            torch.nn.init.normal_(layer.self_attn.q_norm.weight, 1.0, 0.2)
            torch.nn.init.normal_(layer.self_attn.k_norm.weight, 1.0, 0.2)
    model.save_pretrained(path, safe_serialization=True)
    return path


def check_partial_rotary(config: Any) -> None:
    """The reference turns as many dims of a head as the config's `rotary_dim` says (the
    engine reads it so): a transformers that did not would fail every parity test at the
    first token, for no fault of the engine."""
    rotary_dim = getattr(config, "rotary_dim", None)
    if rotary_dim is None:
        return
    factor = (getattr(config, "rope_parameters", None) or {}).get("partial_rotary_factor", 1.0)
    turned = int(config.head_dim * factor)
    if turned != rotary_dim:
        import transformers

        raise RuntimeError(
            f"transformers {transformers.__version__} turns {turned} dims of a head where "
            f"the config's rotary_dim says {rotary_dim}: not a reference for it"
        )


def fp8_checkpoint(src: Path, dst: Path, block: int) -> Path:
    """`src` with its projections' and experts' weights block-quantized to FP8 the way
    DeepSeek-V3 and MiniMax-M2 ship them: float8_e4m3fn values and a float32
    `weight_scale_inv` a block (the block's largest magnitude over e4m3's largest, 448), the
    router's gate, norms and embeddings left alone. transformers dequantizes it at load."""
    import json
    import shutil

    from safetensors.torch import load_file, save_file

    dst.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    for name, w in load_file(str(src / "model.safetensors")).items():
        if not (name.endswith("proj.weight") or ".experts." in name):
            out[name] = w
            continue
        rows, cols = w.shape
        assert rows % block == 0 and cols % block == 0, "transformers reads whole blocks only"
        blocks = w.reshape(rows // block, block, cols // block, block)
        scale = blocks.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
        quantized = blocks / scale[:, None, :, None]
        out[name] = quantized.reshape(rows, cols).to(torch.float8_e4m3fn)
        out[name + "_scale_inv"] = scale
    save_file(out, str(dst / "model.safetensors"), metadata={"format": "pt"})
    config = json.loads((src / "config.json").read_text())
    config["quantization_config"] = {
        "quant_method": "fp8",
        "activation_scheme": "dynamic",
        "fmt": "e4m3",
        "weight_block_size": [block, block],
        "modules_to_not_convert": ["gate", "e_score_correction_bias", "lm_head"],
    }
    (dst / "config.json").write_text(json.dumps(config))
    for f in src.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            shutil.copy(f, dst / f.name)
    return dst


def load_hf(path: Path | str, dtype: torch.dtype = torch.float32, gguf_file: str | None = None):
    from transformers import AutoModelForCausalLM

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    model = AutoModelForCausalLM.from_pretrained(
        str(path), dtype=dtype, attn_implementation="sdpa", **kwargs
    )
    return model.eval()


@torch.inference_mode()
def hf_greedy(model, prompt: Sequence[int], max_new_tokens: int) -> tuple[list[int], list[float]]:
    """Greedy decoding with transformers' own KV cache, one sequence at a time (no padding).
    Returns the tokens and the logprob of each chosen token."""
    ids = torch.tensor([list(prompt)], device=model.device)
    out = model(ids, use_cache=True)
    tokens: list[int] = []
    logprobs: list[float] = []
    for _ in range(max_new_tokens):
        logits = out.logits[0, -1].float()
        tok = int(logits.argmax())
        tokens.append(tok)
        logprobs.append(float(torch.log_softmax(logits, -1)[tok]))
        out = model(ids.new_tensor([[tok]]), past_key_values=out.past_key_values, use_cache=True)
    return tokens, logprobs


class OpenAIPenalties:
    """logits[t] -= count[t] * frequency + (count[t] > 0) * presence, count over the
    tokens generated after the prompt (OpenAI's API reference, "frequency and presence
    penalties")."""

    def __init__(self, prompt_len: int, frequency: float, presence: float) -> None:
        self.prompt_len, self.frequency, self.presence = prompt_len, frequency, presence

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        out = input_ids[:, self.prompt_len :]
        counts = torch.zeros_like(scores).scatter_add_(
            1, out, torch.ones_like(out, dtype=scores.dtype)
        )
        scores = scores - counts * self.frequency
        return scores - (counts > 0).float() * self.presence


@torch.inference_mode()
def hf_generate(model, prompt: Sequence[int], params: SamplingParams) -> list[int]:  # type: ignore[no-untyped-def]
    """Greedy `generate` with the logits processors matching `params`' logit changes, in
    vLLM's order: bias, repetition, frequency and presence. transformers has the first two
    (`SequenceBiasLogitsProcessor`, `RepetitionPenaltyLogitsProcessor`); OpenAI's frequency
    and presence penalties it has not, so they are applied as OpenAI documents them
    (`OpenAIPenalties`). Stops at the model's EOS and includes it, as the engine does."""
    from transformers import (
        GenerationConfig,
        LogitsProcessorList,
        RepetitionPenaltyLogitsProcessor,
        SequenceBiasLogitsProcessor,
    )

    processors = LogitsProcessorList()
    if params.logit_bias:
        processors.append(SequenceBiasLogitsProcessor({(t,): b for t, b in params.logit_bias}))
    if params.repetition_penalty != 1.0:
        processors.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
    if params.frequency_penalty or params.presence_penalty:
        processors.append(
            OpenAIPenalties(len(prompt), params.frequency_penalty, params.presence_penalty)
        )
    config = GenerationConfig(do_sample=False, max_new_tokens=params.max_tokens, pad_token_id=2)
    ids = torch.tensor([list(prompt)])
    out = model.generate(ids, generation_config=config, logits_processor=processors)
    return out[0, len(prompt) :].tolist()
