"""Trainer callbacks that sftkit adds to TRL's SFTTrainer."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import TYPE_CHECKING, Any, TextIO

from transformers import TrainerCallback

from sftkit.data.prompts import Prompt, load_prompts
from sftkit.model import GenerationSettings, encode_prompts, generate
from sftkit.run_dir import PROGRESS_FILE, clock, progress_numbers

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from sftkit.config import SftConfig
    from sftkit.templates import Template

logger = logging.getLogger(__name__)

SAMPLES_RUN = "samples"  # TensorBoard run (folder under output_dir/runs) holding the generated samples
SAMPLES_TAG = "eval_samples"


class GenerationSamplesCallback(TrainerCallback):
    """At each evaluation, answers a few fixed eval prompts (greedy) and logs them to TensorBoard as text.

    The text of sample i is under the tag `eval_samples/i` of the TensorBoard run
    `<output_dir>/runs/samples`, one entry per evaluation step, so a user watches the answers change.
    Only the main process generates. Sharded training (FSDP, DeepSpeed ZeRO-3) is skipped: one rank
    alone cannot run a sharded model.
    """

    def __init__(self, tokenizer: Any, template: Template, prompts: list[Prompt], max_new_tokens: int) -> None:
        self.tokenizer = tokenizer
        self.prompts = prompts
        self.prompt_ids, self.header_tails = encode_prompts(tokenizer, template, prompts)
        self.prompt_texts = [template.generation_prompt(p.messages, p.tools) for p in prompts]
        self.stop_ids = template.stop_token_ids(tokenizer)
        self.max_new_tokens = max_new_tokens
        self._writer: Any = None
        self._noted_sharding = False

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero or model is None:
            return
        if _sharded(args):
            if not self._noted_sharding:
                logger.warning(
                    "eval_generation_samples: skipped, a sharded (FSDP / ZeRO-3) model cannot generate on one process"
                )
                self._noted_sharding = True
            return
        settings = GenerationSettings(self.max_new_tokens, batch_size=len(self.prompt_ids))
        replies = generate(model, self.tokenizer, self.prompt_ids, self.stop_ids, settings)
        writer = self._summary_writer(args)
        for i, (reply, tail) in enumerate(zip(replies, self.header_tails)):
            reply = reply.removeprefix(tail)
            writer.add_text(f"{SAMPLES_TAG}/{i}", self._markdown(i, reply, state.global_step), state.global_step)
        writer.flush()

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _summary_writer(self, args: TrainingArguments) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=os.path.join(args.output_dir, "runs", SAMPLES_RUN))
        return self._writer

    def _markdown(self, i: int, reply: str, step: int) -> str:
        """TensorBoard renders markdown; indented blocks keep control tokens like <|im_start|> visible."""
        prompt = self.prompts[i]
        return (
            f"**prompt** ({prompt.dataset} row {prompt.index})\n\n{_block(self.prompt_texts[i])}\n\n"
            f"**reference**\n\n{_block(prompt.reference)}\n\n**answer at step {step}**\n\n{_block(reply)}"
        )


def generation_samples_callback(cfg: SftConfig, tokenizer: Any, template: Template) -> GenerationSamplesCallback | None:
    """The samples callback for a run, or None when it would log nothing.

    None when the run does not evaluate, has no eval set, asks for no samples
    (`eval_generation_samples: 0`) or does not report to TensorBoard.
    """
    wants_tensorboard = any(name in ("tensorboard", "all") for name in cfg.report_to)
    if not (cfg.does_eval and cfg.has_eval_data and wants_tensorboard and cfg.eval_generation_samples):
        return None
    prompts = load_prompts(cfg, "eval", cfg.eval_generation_samples, template)
    return GenerationSamplesCallback(tokenizer, template, prompts, cfg.generation_max_new_tokens)


def _sharded(args: TrainingArguments) -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled

    return bool(getattr(args, "fsdp", None)) or is_deepspeed_zero3_enabled()


def _block(text: str) -> str:
    return "\n".join(f"    {line}" for line in (text or "(empty)").splitlines() or [""])


class ProgressReport(TrainerCallback):
    """What a run shows while it trains, in place of transformers' bar and its printed dicts of logs.

    On a terminal: one bar (steps done, elapsed and ETA from tqdm) with loss, learning rate and tokens/s
    beside it. To a file or a pipe: one plain line per logging step with the same numbers and an ETA, and
    no carriage returns or cursor escapes. Evaluations are one line each. The same numbers go, one JSON
    object a line, to `output_dir/progress.jsonl`, which `sftkit webui` draws its live curves from (the
    trainer's own trainer_state.json is written only with a checkpoint). Only the main process reports.
    """

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout
        self.bar: Any = None
        self._first_step = 0
        self._started = self._last_time = 0.0
        self._last_tokens = 0

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._first_step = state.global_step  # a resumed run starts past 0
        self._started = self._last_time = time.monotonic()
        self._last_tokens = state.num_input_tokens_seen
        if self.out.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(
                total=state.max_steps,
                initial=state.global_step,
                file=self.out,
                unit="step",
                dynamic_ncols=True,
                desc="training",
            )

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, float] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        record = self._record(state, logs)
        if record is None:
            return  # the end-of-training summary: sftkit prints its own
        if args is not None:
            _append_progress(args.output_dir, record)
        if "loss" in record:
            numbers = progress_numbers(record)
            if self.bar is not None:
                self.bar.set_postfix_str(numbers, refresh=True)
                return
            line = f"step {state.global_step}/{state.max_steps}  {numbers}  eta {clock(record['eta_seconds'])}"
        else:
            line = f"eval at step {state.global_step}: loss {record['eval_loss']:.4f}"
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def _record(self, state: TrainerState, logs: dict[str, float]) -> dict[str, Any] | None:
        """The numbers of one training or evaluation log; None for any other log."""
        base = {"step": state.global_step, "max_steps": state.max_steps, "time": time.time()}
        if "eval_loss" in logs and "loss" not in logs:
            return {**base, "eval_loss": logs["eval_loss"]}
        if "loss" not in logs:
            return None
        now, tokens = time.monotonic(), state.num_input_tokens_seen
        rate = (tokens - self._last_tokens) / (now - self._last_time) if now > self._last_time else 0.0
        self._last_time, self._last_tokens = now, tokens
        done = state.global_step - self._first_step
        eta = (now - self._started) / done * (state.max_steps - state.global_step) if done > 0 else None
        return {
            **base,
            "loss": logs["loss"],
            "learning_rate": logs.get("learning_rate"),
            "tokens_per_second": rate,
            "eta_seconds": eta,
        }


def _append_progress(output_dir: str, record: dict[str, Any]) -> None:
    """One JSON line, appended and flushed at once, so a reader never sees half of one (a resumed run goes on)."""
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, PROGRESS_FILE), "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record) + "\n")


PISSA_INIT = "pissa_init"  # the PiSSA adapter as initialised, beside the run: the final save converts against it


class PissaInitCallback(TrainerCallback):
    """Saves the freshly initialised PiSSA adapter before the first update (once: a resumed run keeps it).

    PiSSA moves the top singular directions of each weight into the adapter, so its saved adapter fits
    only the residual base. `SftkitTrainer.save_model` converts the final adapter against this one into a
    plain LoRA of the original weights (PEFT's path_initial_model_for_weight_conversion), which merge, chat
    and eval load on the unchanged base.
    """

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, model: Any = None, **kwargs: Any
    ) -> None:
        folder = os.path.join(args.output_dir, PISSA_INIT)
        if not state.is_world_process_zero or os.path.isdir(folder):
            return
        config = model.peft_config["default"]
        init, config.init_lora_weights = config.init_lora_weights, True  # loads back as a plain LoRA
        try:
            model.save_pretrained(folder)
        finally:
            config.init_lora_weights = init
