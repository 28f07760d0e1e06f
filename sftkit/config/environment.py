"""Checks of a config against this machine: the packages its settings need (loggers, 8-bit optimizers,
DeepSpeed, flash-attention).

Not part of the schema: a config is valid wherever it is read, and a finished run's saved config must stay
loadable (merge, chat, eval) on a machine that lacks a logger's package. So `sftkit validate` reports these
as warnings (the file is fine, this machine cannot run it) and `sftkit train` stops on them before loading
anything.

`cannot_run_here` lists the methods this machine cannot run (fp8 without a suitable GPU, a method whose
package is not installed, a pre-quantized model without its kernels): `validate` shows each as a warning,
and `machine_problems` includes them, so `train` stops on them before loading anything. Settings that
contradict the checkpoint itself (full fine-tuning of a GPTQ model) are errors everywhere (`check_prequantized`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.errors import ConfigError

if TYPE_CHECKING:
    from sftkit.config.schema import SftConfig

# report_to name -> the modules transformers looks for (any one of them will do) and the package to install.
REPORTER_MODULES = {
    "azure_ml": (("azureml",), "azureml-core"),
    "clearml": (("clearml",), "clearml"),
    "codecarbon": (("codecarbon",), "codecarbon"),
    "comet_ml": (("comet_ml",), "comet-ml"),
    "dagshub": (("dagshub",), "dagshub"),
    "dvclive": (("dvclive",), "dvclive"),
    "flyte": (("flytekit",), "flytekit"),
    "kubeflow": (("kubeflow",), "kubeflow"),
    "mlflow": (("mlflow",), "mlflow"),
    "neptune": (("neptune",), "neptune"),
    "swanlab": (("swanlab",), "swanlab"),
    "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "trackio": (("trackio",), "trackio"),
    "wandb": (("wandb",), "wandb"),
}

EIGHT_BIT_OPTIMIZERS = ("adamw_bnb_8bit", "paged_adamw_8bit")
# flash_attn choice -> the module transformers imports for it and the package to install.
FLASH_ATTENTION_MODULES = {"fa2": ("flash_attn", "flash-attn"), "fa3": ("flash_attn_interface", "flash-attn-3")}
DEEPSPEED_INSTALL = "pip install -e .[deepspeed]"


def check_environment(cfg: SftConfig) -> None:
    """Refuses settings this machine cannot honour, every problem at once (`sftkit train`).

    Raises:
        ConfigError: the lines of `machine_problems`.
    """
    if problems := machine_problems(cfg) + prequantized_conflicts(cfg):
        raise ConfigError(*problems)


def machine_problems(cfg: SftConfig) -> list[str]:
    """One line per setting whose package is not installed here: a `report_to` logger, an 8-bit optimizer,
    DeepSpeed, or the flash-attention kernel chosen."""
    problems = []
    for name in cfg.report_to:
        modules, package = REPORTER_MODULES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(module) for module in modules):
            problems.append(
                f"report_to: {name} is not installed; run `pip install {package}` or remove {name} from report_to"
            )
    if cfg.optim in EIGHT_BIT_OPTIMIZERS and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(
            f"optim: {cfg.optim} needs bitsandbytes, which is not installed; run `pip install "
            "bitsandbytes` or use optim: adamw_torch"
        )
    if cfg.deepspeed and importlib.util.find_spec("deepspeed") is None:
        problems.append(
            f"deepspeed: the deepspeed package is not installed; run `{DEEPSPEED_INSTALL}` (or remove the "
            "deepspeed key)"
        )
    if cfg.flash_attn in FLASH_ATTENTION_MODULES:
        module, package = FLASH_ATTENTION_MODULES[cfg.flash_attn]
        if importlib.util.find_spec(module) is None:
            problems.append(
                f"flash_attn: {cfg.flash_attn} needs the {package} package (and a GPU it supports), which "
                f"is not installed; install it or use flash_attn: sdpa"
            )
    return problems + cannot_run_here(cfg)


def environment_notes(cfg: SftConfig) -> list[str]:
    """Settings this machine will not honour but that need not stop a run: one line each (`sftkit validate`).

    `enable_liger_kernel` asks for Triton kernels on a CUDA GPU; elsewhere training goes on with the model's
    own modules and the chunked cross-entropy.
    """
    notes = []
    if cfg.enable_liger_kernel:
        missing = [package for package in ("liger_kernel", "triton") if importlib.util.find_spec(package) is None]
        import torch

        reason = (
            f"{' and '.join(name.replace('_', '-') for name in missing)} not installed"
            if missing
            else None
            if torch.cuda.is_available()
            else "no CUDA GPU"
        )
        if reason:
            notes.append(
                f"enable_liger_kernel: Liger's kernels need a CUDA GPU with liger-kernel installed (here: "
                f"{reason}), so training uses the model's own RMSNorm and SwiGLU and the chunked "
                "cross-entropy; `pip install liger-kernel` on a GPU machine, or remove the key"
            )
    return notes


# ---------------------------------------------------------------------------- methods this machine cannot run

# Method switch -> (module to import, pip package).
METHOD_PACKAGES = {
    "use_galore": ("galore_torch", "galore-torch"),
    "use_apollo": ("apollo_torch", "apollo-torch"),
    "use_badam": ("badam", "badam"),
    "use_adam_mini": ("adam_mini", "adam-mini"),
    "mixture_of_depths": ("MoD", "mixture-of-depth"),
}
QUANTIZATION_PACKAGES = {"bnb": ("bitsandbytes", "bitsandbytes"), "hqq": ("hqq", "hqq"), "eetq": ("eetq", "eetq")}
# A pre-quantized checkpoint's quant_method -> the modules transformers loads it with, and the pip package.
PREQUANTIZED_PACKAGES = {
    "gptq": (("gptqmodel", "optimum"), "gptqmodel optimum"),
    "awq": (("awq",), "autoawq"),
    "aqlm": (("aqlm",), "aqlm"),
    "quanto": (("optimum.quanto",), "optimum-quanto"),
    "hqq": (("hqq",), "hqq"),
    "eetq": (("eetq",), "eetq"),
    "bitsandbytes": (("bitsandbytes",), "bitsandbytes"),
}
FP8_PACKAGES = {
    "auto": ("torchao", "torchao"),
    "torchao": ("torchao", "torchao"),
    "te": ("transformer_engine", "transformer-engine"),
    "msamp": ("msamp", "ms-amp"),
}


def cannot_run_here(cfg: SftConfig) -> list[str]:
    """One line per setting this machine cannot run, saying what it needs; empty when everything can run.

    Cheap: reads package metadata, the GPU's properties and the model's config.json (a local model), nothing
    more.
    """
    lines = [
        f"{key}: needs the {package} package, which is not installed here; `pip install {package}`"
        for key, (module, package) in METHOD_PACKAGES.items()
        if getattr(cfg, key) not in (False, None) and not _installed(module)
    ]
    if cfg.use_muon and not _torch_has_muon():
        lines.append("use_muon: needs torch.optim.Muon (torch 2.9 or later); upgrade torch")
    if cfg.quantization_bit is not None and cfg.quantization_method in QUANTIZATION_PACKAGES:
        module, package = QUANTIZATION_PACKAGES[cfg.quantization_method]
        if not _installed(module):
            lines.append(
                f"quantization_method: {cfg.quantization_method} needs the {package} package, which is not "
                f"installed here; `pip install {package}`, or quantization_method: bnb"
            )
    if cfg.fp8:
        lines += _fp8_problems(cfg)
    method = prequantized_method(cfg.model_name_or_path)
    if method is not None and method not in PREQUANTIZED_PACKAGES:
        lines.append(
            f"model_name_or_path: the checkpoint is {method}-quantized, which sftkit does not load; use its "
            "unquantized (bf16) checkpoint, with quantization_bit: 4 for QLoRA"
        )
    elif method is not None and not all(_installed(module) for module in PREQUANTIZED_PACKAGES[method][0]):
        lines.append(
            f"model_name_or_path: the checkpoint is {method.upper()}-quantized and loading it needs "
            f"{PREQUANTIZED_PACKAGES[method][1]}, not installed here; `pip install "
            f"{PREQUANTIZED_PACKAGES[method][1]}`, or train its unquantized checkpoint with "
            "quantization_bit: 4"
        )
    return lines


def check_prequantized(cfg: SftConfig) -> None:
    """Refuses settings that contradict a pre-quantized checkpoint (`sftkit validate` and `train`).

    Raises:
        ConfigError: the lines of `prequantized_conflicts`.
    """
    if lines := prequantized_conflicts(cfg):
        raise ConfigError(*lines)


def prequantized_method(model: str) -> str | None:
    """The quant_method a checkpoint's config.json records (gptq, awq, bitsandbytes, ...), else None.

    Read from a local folder, or for a hub id from the local Hugging Face cache (never the network: an
    uncached model is checked by transformers as it loads).
    """
    config_file: Any = Path(model) / "config.json"
    if not config_file.is_file() and not Path(model).exists():
        from huggingface_hub import try_to_load_from_cache

        try:
            config_file = try_to_load_from_cache(model, "config.json")
        except ValueError:  # not a valid repo id
            return None
        if not isinstance(config_file, str):
            return None
    config = _read_json(Path(config_file))
    quantization = config.get("quantization_config") if isinstance(config, dict) else None
    if not isinstance(quantization, dict):
        return None
    return str(quantization.get("quant_method") or "unknown").lower()


def prequantized_conflicts(cfg: SftConfig) -> list[str]:
    """Settings that contradict a pre-quantized checkpoint (GPTQ, AWQ, ...): nothing may train differently."""
    method = prequantized_method(cfg.model_name_or_path)
    if method is None:
        return []
    lines = []
    if not cfg.uses_adapter:
        lines.append(
            f"finetuning_type: the checkpoint is {method}-quantized, so it trains only with lora or oft, not "
            f"{cfg.finetuning_type}"
        )
    if cfg.quantization_bit is not None:
        lines.append(f"quantization_bit: the checkpoint is {method}-quantized already; remove quantization_bit")
    if cfg.use_dora and method != "bitsandbytes":
        lines.append(f"use_dora: DoRA does not work on {method}-quantized weights; remove use_dora")
    return lines


def _fp8_problems(cfg: SftConfig) -> list[str]:
    module, package = FP8_PACKAGES[cfg.fp8_backend]
    capability = _cuda_capability()
    if capability is None or capability < (8, 9):
        found = "no CUDA GPU" if capability is None else f"a GPU of compute capability {capability[0]}.{capability[1]}"
        return [
            f"fp8: needs an NVIDIA GPU of compute capability 8.9 or higher (Ada, Hopper, Blackwell) and {package}; "
            f"here: {found}; remove fp8 (bf16 trains everywhere)"
        ]
    if not _installed(module):
        return [
            f"fp8: fp8_backend {cfg.fp8_backend} needs {package}, which is not installed here; `pip install {package}`"
        ]
    return []


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a dotted name whose parent package is missing
        return False


def _torch_has_muon() -> bool:
    import torch

    return hasattr(torch.optim, "Muon")


def _cuda_capability() -> tuple[int, int] | None:
    import torch

    return tuple(torch.cuda.get_device_capability()) if torch.cuda.is_available() else None


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
