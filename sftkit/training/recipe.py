"""The training recipe: from a validated config to a run directory, as a list of steps.

Checks that need nothing heavy come first (output_dir, resume, distributed settings), then the data, the
model (with its training-time changes: loss, attention, adapter, stop tokens), the trainer, and the run.
"""

from __future__ import annotations

import logging
import shutil
from contextlib import nullcontext
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sftkit.atomic import place_problem, write_text
from sftkit.config import check_environment, dump_resolved
from sftkit.data import check_sources, load_tokenizer_and_template, resolve_model
from sftkit.errors import SftkitError, gather
from sftkit.model import (
    add_adapter,
    check_context_length,
    count_parameters,
    load_model,
    resolve_precision,
    set_stop_tokens,
)
from sftkit.run_dir import CONFIG_FILE, MODEL_CARD, is_run, model_card
from sftkit.templates import Template
from sftkit.training.attention import use_document_attention
from sftkit.training.distributed import check_distributed, prepare_data_once, process_rank, quiet_other_ranks
from sftkit.training.kernels import apply_kernels
from sftkit.training.lifecycle import (
    check_checkpoint_files,
    check_disk_space,
    check_resume_config,
    checkpoint_state,
    discard_partial_checkpoints,
    estimate_disk,
    resolve_resume,
    run_lock,
    save_model_atomically,
)
from sftkit.training.report import planned_updates, print_end, print_start, write_metrics

if TYPE_CHECKING:
    from trl import SFTTrainer

    from sftkit.config import SftConfig
    from sftkit.model import Precision

logger = logging.getLogger(__name__)


def train(cfg: SftConfig, overwrite: bool = False, resume: str | None = None) -> Path:
    """Fine-tunes the model as `cfg` says and writes everything to `cfg.output_dir`.

    Args:
        cfg: The validated config.
        overwrite: Replace an earlier run in a non-empty output_dir (also `cfg.overwrite_output_dir`).
        resume: Continue from a checkpoint: "latest" (newest in output_dir) or a checkpoint path.

    Returns:
        The run directory.

    Raises:
        SftkitError: output_dir is unusable, or the model, data or settings are invalid.
    """
    out = Path(cfg.output_dir)
    check_output_place(out)
    # one run per output_dir (under a launcher, rank 0 holds the lock for all of them)
    with run_lock(out) if process_rank() == 0 else nullcontext():
        return _train(cfg, out, overwrite, resume)


def _train(cfg: SftConfig, out: Path, overwrite: bool, resume: str | None) -> Path:
    """`train` once the run lock is held."""
    replace, checkpoint, *_ = gather(  # every instant check, all problems reported together
        lambda: check_output_dir(out, overwrite or cfg.overwrite_output_dir, resuming=bool(resume)),
        lambda: _checkpoint_to_resume(cfg, out, resume),
        lambda: check_distributed(cfg),
        lambda: check_environment(cfg),
        lambda: resolve_model(cfg.model_name_or_path),
        lambda: check_sources(cfg),
    )
    resumed = checkpoint_state(checkpoint) if checkpoint else None
    quiet_other_ranks()  # under a launcher only rank 0 talks; before the heavy imports, which talk too
    from transformers import set_seed  # heavy imports after the instant checks

    from sftkit.training.trainer import build_trainer  # torch, transformers, TRL

    set_seed(cfg.seed)
    precision = resolve_precision(cfg)
    tokenizer, template = load_tokenizer_and_template(cfg)
    check_context_length(cfg)
    data = prepare_data_once(cfg, tokenizer, template)  # several processes: the first tokenizes, the rest read it
    model = load_model_for_training(cfg, tokenizer, template, precision)
    params = count_parameters(model)
    trainer = build_trainer(cfg, precision, model, tokenizer, template, data.train, data.eval)
    planned = planned_updates(trainer, len(trainer.train_dataset))
    check_disk_space(out, estimate_disk(model, cfg, planned), resuming=checkpoint is not None)
    main = trainer.is_world_process_zero()
    if main:
        reset_output_dir(out, replace)
        discard_partial_checkpoints(out)
        dump_resolved(cfg, out / CONFIG_FILE)
        print_start(cfg, trainer, params, data.stats, precision, checkpoint, resumed)
    with trainer.run_guard.handling_signals():  # Ctrl-C / SIGTERM: save a checkpoint, stop, say how to resume
        result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
        trainer.run_guard.raise_if_stopped()  # interrupted, or the loss became NaN
        save_run(trainer, out)
        if cfg.do_eval:  # LLaMA-Factory's do_eval: one more evaluation after the last update
            trainer.evaluate()
        tokens_before = int((resumed or {}).get("num_input_tokens_seen") or 0)
        metrics = write_metrics(trainer, result, cfg, tokenizer, template, data, out, main, tokens_before)
    if main:
        write_text(out / MODEL_CARD, model_card(out))  # after the trainer's save, which leaves PEFT's placeholder
        print_end(cfg, trainer, metrics, out)
    return out


def _checkpoint_to_resume(cfg: SftConfig, out: Path, resume: str | None) -> Path | None:
    """The checkpoint `--resume` names, once its files and the run's config allow it; None without --resume."""
    checkpoint = resolve_resume(out, resume)
    if checkpoint is not None:
        check_checkpoint_files(checkpoint, str(resume))
        check_resume_config(cfg, out)  # before anything is written: the run's record stays as it was
    return checkpoint


# ---------------------------------------------------------------------------- output directory


def check_output_dir(out: Path, overwrite: bool, resuming: bool = False) -> bool:
    """Refuses an unusable output_dir before anything slow runs; True when an earlier run will be replaced.

    Raises:
        SftkitError: `out` is a file, or non-empty without --overwrite, or holds something other than a run.
    """
    check_output_place(out)
    if resuming or not out.is_dir() or not any(out.iterdir()):
        return False
    if not overwrite:
        raise SftkitError(
            f"output_dir: {out} is not empty; pass --overwrite (or overwrite_output_dir: true) to "
            "replace that run, or choose another output_dir"
        )
    if not is_run(out):
        raise SftkitError(
            f"output_dir: {out} is not empty and holds no sftkit run, so --overwrite will not "
            "delete it; choose an empty or new output_dir"
        )
    return True


def check_output_place(out: Path) -> None:
    """Refuses an output_dir that cannot be created or written (a file on its path, a read-only folder).

    Raises:
        SftkitError: naming the path in the way.
    """
    problem = place_problem(out, "dir")
    if problem:
        raise SftkitError(f"output_dir: {problem}")


def reset_output_dir(out: Path, replace: bool) -> None:
    """Deletes the replaced run (only once the new one is ready to train) and creates `out`."""
    if replace:
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


# ---------------------------------------------------------------------------- the model


def load_model_for_training(cfg: SftConfig, tokenizer: Any, template: Template, precision: Precision) -> Any:
    """The base model with everything training changes in it: attention, kernels, adapter, stop tokens.

    The changes are made here, as the model is loaded, never inside the trainer, with one exception: the
    chunked loss, which SftkitTrainer installs once over the LM head TRL's SFTTrainer puts on every model.
    """
    model = load_model(cfg, tokenizer, precision)
    kernel = use_document_attention(model, cfg.flash_attn, precision.device) if cfg.packing else None
    if kernel:
        logger.info("packed rows: attention runs per packed example (%s, sftkit.training.attention)", kernel)
    new_tokens = template.token_ids(tokenizer) + tokenizer.convert_tokens_to_ids(cfg.new_special_tokens or [])
    model = add_adapter(model, cfg, new_tokens)
    for note in apply_kernels(model, cfg.enable_liger_kernel, cfg.torch_compile, precision.device):
        logger.info(note)
    set_stop_tokens(model, tokenizer, template)
    return model


# ---------------------------------------------------------------------------- saving


def save_run(trainer: SFTTrainer, out: Path) -> None:
    """Writes the final (best, when loaded at the end) weights, tokenizer, generation config and state."""
    save_model_atomically(trainer, out)  # weights land last: a killed save never looks finished
    trainer.save_state()
    if trainer.is_world_process_zero():
        trainer.model.generation_config.save_pretrained(out)
