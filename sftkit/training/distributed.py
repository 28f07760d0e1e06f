"""Training on several processes: what changes when a launcher starts N copies of `sftkit train`.

torchrun, `accelerate launch` and the `deepspeed` launcher start the processes; the trainer (accelerate
underneath) does the rest: DDP by default, DeepSpeed ZeRO from the `deepspeed` key, FSDP from `fsdp` /
`fsdp_config`. sftkit only makes the copies behave as one run: settings are checked before anything slow,
the data is tokenized once, and only rank 0 talks (errors excepted).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.data import prepare_data
from sftkit.errors import ConfigError

if TYPE_CHECKING:
    from sftkit.config import SftConfig
    from sftkit.data import PreparedData
    from sftkit.templates import Template


# sftkit's copies of LLaMA-Factory's DeepSpeed configs (its examples/deepspeed/), beside the package in a checkout.
SHIPPED_DEEPSPEED = Path(__file__).resolve().parents[2] / "configs" / "deepspeed"
LLAMAFACTORY_DEEPSPEED = "examples/deepspeed/"


def deepspeed_file(path: str) -> str:
    """The DeepSpeed JSON to use for the `deepspeed` key: the path itself, or, when LLaMA-Factory's
    `examples/deepspeed/NAME.json` is not there (a YAML brought across), sftkit's copy of that file."""
    name = path.replace("\\", "/").removeprefix("./")
    if Path(path).is_file() or not name.startswith(LLAMAFACTORY_DEEPSPEED):
        return path
    ours = SHIPPED_DEEPSPEED / name.removeprefix(LLAMAFACTORY_DEEPSPEED)
    return str(ours) if ours.is_file() else path


def deepspeed_note(cfg: SftConfig) -> str | None:
    """One line when the `deepspeed` key is read from sftkit's copy of LLaMA-Factory's file, else None."""
    if not cfg.deepspeed or deepspeed_file(cfg.deepspeed) == cfg.deepspeed:
        return None
    return (
        f"deepspeed: {cfg.deepspeed} is not here (LLaMA-Factory's examples folder); using sftkit's copy of that "
        f"file, {deepspeed_file(cfg.deepspeed)}"
    )


def check_distributed(cfg: SftConfig) -> None:
    """Checks the DeepSpeed / FSDP settings that the schema cannot: their files exist and parse.

    Runs at train time, not in the schema: a finished run's saved config must stay loadable (merge, chat)
    on a machine without the JSON file or the package.

    Raises:
        ConfigError: every problem at once, each naming the key and the fix.
    """
    problems = []
    if cfg.deepspeed:
        # the package itself is checked with the other packages (sftkit.config.environment)
        problems.append(
            _json_file_problem("deepspeed", deepspeed_file(cfg.deepspeed), "use one of configs/deepspeed/*.json")
        )
        if (note := deepspeed_note(cfg)) and process_rank() == 0:
            print(f"note: {note}", file=sys.stderr)
    if isinstance(cfg.fsdp_config, str):
        problems.append(_json_file_problem("fsdp_config", cfg.fsdp_config, "give a JSON file or a YAML mapping"))
    if cfg.fsdp_config and not cfg.fsdp:
        problems.append("fsdp_config: set fsdp: true too, or remove fsdp_config")
    if problems := [p for p in problems if p]:
        raise ConfigError(*problems)


def _json_file_problem(key: str, path: str, fix: str) -> str | None:
    """One line naming `key` when `path` is not a readable JSON object, else None."""
    file = Path(path)
    if not file.is_file():
        return f"{key}: {path} not found (relative paths resolve from the working directory, {Path.cwd()}); {fix}"
    try:
        parsed = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        return f"{key}: {path} is not valid JSON ({exc}); {fix}"
    return None if isinstance(parsed, dict) else f"{key}: {path} must hold a JSON object; {fix}"


def process_rank() -> int:
    """This process's global rank as the launcher set it (0 when started without one)."""
    return int(os.environ.get("RANK", "0"))


def quiet_other_ranks() -> None:
    """On every process but rank 0, lets only errors reach the terminal: logs, warnings and progress bars.

    Called before the heavy libraries load, so their import-time chatter is silenced too. The trainer keeps
    replicas at this level through `log_level_replica="error"` (see `build_sft_config`).
    """
    if process_rank() == 0:
        return
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")  # c10 warnings, read when torch loads
    os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] = "1"
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["TRANSFORMERS_NO_ADVISORY_WARNINGS"] = "1"
    logging.getLogger().setLevel(logging.ERROR)  # libraries that log through the root logger
    warnings.filterwarnings("ignore")
    _quiet_hf_libraries()


def _quiet_hf_libraries() -> None:
    """transformers' and datasets' own loggers and progress bars (their environment variables are read once)."""
    import datasets
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()


def prepare_data_once(cfg: SftConfig, tokenizer: Any, template: Template) -> PreparedData:
    """Tokenizes on each node's main process first; the other processes then read its on-disk cache.

    The cache is keyed by content (`sftkit.data`), so every process arrives at the same file; only the
    first process honours `overwrite_cache`, or each would tokenize again. Without a launcher this is
    simply `prepare_data`.
    """
    from accelerate import PartialState

    state = PartialState()
    if state.local_process_index != 0:
        cfg = cfg.model_copy(update={"overwrite_cache": False})
    with state.local_main_process_first():
        return prepare_data(cfg, tokenizer, template)
