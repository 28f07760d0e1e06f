"""Checks of a config against this machine: the packages its settings need (loggers, 8-bit optimizers,
DeepSpeed, flash-attention).

Not part of the schema: a config is valid wherever it is read, and a finished run's saved config must stay
loadable (merge, chat, eval) on a machine that lacks a logger's package. So `sftkit validate` reports these
as warnings (the file is fine, this machine cannot run it) and `sftkit train` stops on them before loading
anything.
"""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from sftkit.errors import ConfigError

if TYPE_CHECKING:
    from sftkit.config.schema import SftConfig

# report_to name -> the modules transformers looks for (any one of them will do) and the package to install.
REPORTER_MODULES = {
    "azure_ml": (("azureml",), "azureml-core"), "clearml": (("clearml",), "clearml"),
    "codecarbon": (("codecarbon",), "codecarbon"), "comet_ml": (("comet_ml",), "comet-ml"),
    "dagshub": (("dagshub",), "dagshub"), "dvclive": (("dvclive",), "dvclive"), "flyte": (("flytekit",), "flytekit"),
    "kubeflow": (("kubeflow",), "kubeflow"), "mlflow": (("mlflow",), "mlflow"), "neptune": (("neptune",), "neptune"),
    "swanlab": (("swanlab",), "swanlab"), "tensorboard": (("tensorboard", "tensorboardX"), "tensorboard"),
    "trackio": (("trackio",), "trackio"), "wandb": (("wandb",), "wandb"),
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
    if problems := machine_problems(cfg):
        raise ConfigError(*problems)


def machine_problems(cfg: SftConfig) -> list[str]:
    """One line per setting whose package is not installed here: a `report_to` logger, an 8-bit optimizer,
    DeepSpeed, or the flash-attention kernel chosen."""
    problems = []
    for name in cfg.report_to:
        modules, package = REPORTER_MODULES.get(name, ((), ""))
        if modules and not any(importlib.util.find_spec(module) for module in modules):
            problems.append(f"report_to: {name} is not installed; run `pip install {package}` or remove {name} "
                            "from report_to")
    if cfg.optim in EIGHT_BIT_OPTIMIZERS and importlib.util.find_spec("bitsandbytes") is None:
        problems.append(f"optim: {cfg.optim} needs bitsandbytes, which is not installed; run `pip install "
                        "bitsandbytes` or use optim: adamw_torch")
    if cfg.deepspeed and importlib.util.find_spec("deepspeed") is None:
        problems.append(f"deepspeed: the deepspeed package is not installed; run `{DEEPSPEED_INSTALL}` (or remove the "
                        "deepspeed key)")
    if cfg.flash_attn in FLASH_ATTENTION_MODULES:
        module, package = FLASH_ATTENTION_MODULES[cfg.flash_attn]
        if importlib.util.find_spec(module) is None:
            problems.append(f"flash_attn: {cfg.flash_attn} needs the {package} package (and a GPU it supports), which "
                            f"is not installed; install it or use flash_attn: sdpa")
    return problems


def environment_notes(cfg: SftConfig) -> list[str]:
    """Settings this machine will not honour but that need not stop a run: one line each (`sftkit validate`).

    `enable_liger_kernel` asks for Triton kernels on a CUDA GPU; elsewhere training goes on with the model's
    own modules and the chunked cross-entropy.
    """
    notes = []
    if cfg.enable_liger_kernel:
        missing = [package for package in ("liger_kernel", "triton") if importlib.util.find_spec(package) is None]
        import torch

        reason = (f"{' and '.join(name.replace('_', '-') for name in missing)} not installed" if missing
                  else None if torch.cuda.is_available() else "no CUDA GPU")
        if reason:
            notes.append(f"enable_liger_kernel: Liger's kernels need a CUDA GPU with liger-kernel installed (here: "
                         f"{reason}), so training uses the model's own RMSNorm and SwiGLU and the chunked "
                         "cross-entropy; `pip install liger-kernel` on a GPU machine, or remove the key")
    return notes
