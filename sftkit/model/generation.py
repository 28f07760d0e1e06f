"""Generation with the trained template: prompt ids, stop tokens, sampling settings and batched decoding.

Shared by `sftkit chat`, `sftkit predict`, the samples logged during training and the merged model's
generation_config, so every way of generating stops where training taught the model to stop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from sftkit.data.masking import encode_prompt, generation_tail

if TYPE_CHECKING:
    from sftkit.templates import Template


class Conversation(Protocol):
    """Anything with the messages of a conversation ending on the user side, and its tools."""

    messages: list[dict[str, str]]
    tools: str | None


@dataclass
class GenerationSettings:
    """How replies are generated: greedy when `temperature` is 0, else sampled with `top_p` and `seed`."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    batch_size: int = 16  # prompts generated together, left padded

    def problems(self) -> list[str]:
        """One line per invalid setting, named as its command-line option."""
        return [
            line
            for line in (
                "--max-new-tokens: must be at least 1" if self.max_new_tokens < 1 else "",
                "--temperature: must be 0 (greedy) or positive" if self.temperature < 0 else "",
                "--top-p: must be in (0, 1]" if not 0 < self.top_p <= 1 else "",
                "--batch-size: must be at least 1" if self.batch_size < 1 else "",
            )
            if line
        ]


def encode_prompts(
    tokenizer: Any, template: Template, prompts: Sequence[Conversation]
) -> tuple[list[list[int]], list[str]]:
    """Generation ids of each prompt, and the header text each leaves for the model to generate.

    ERNIE's "Assistant: " keeps its space out of the prompt ids (it merges with the reply's first
    token); the model generates it, and it is no part of the reply. The tail is the template's
    (`generation_tail`, the rule training's labels follow), the same for every prompt.
    """
    ids = [encode_prompt(tokenizer, template, p.messages, p.tools) for p in prompts]
    tail = generation_tail(tokenizer, template)
    return ids, [tail] * len(ids)


def generation_config(tokenizer: Any, stop_ids: list[int], settings: GenerationSettings) -> Any:
    """A complete GenerationConfig, so sampling defaults shipped with a model never apply unasked."""
    from transformers import GenerationConfig

    sampling = (
        {"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
        if settings.temperature > 0
        else {"do_sample": False}
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad, **sampling)


def generate(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    stop_ids: list[int],
    settings: GenerationSettings,
    streamer: Any = None,
    stopping_criteria: Any = None,
    logits_processor: Any = None,
) -> list[str]:
    """Replies to token-id prompts, batched with left padding, each stopping at any of `stop_ids`.

    Greedy decoding touches no random state, so calling this during training leaves the run's randomness
    alone (sampling draws from torch's generator: seed it first). The model's train/eval mode is
    restored afterwards. A `streamer` needs a batch of one prompt. `logits_processor` (transformers' hook) runs
    after the processors `settings` ask for (serve records log-probabilities and constrains replies there).

    Returns:
        The decoded replies (special tokens, the stop token included, removed), in prompt order.
    """
    config = generation_config(tokenizer, stop_ids, settings)
    was_training = model.training
    model.eval()
    try:
        replies: list[str] = []
        for start in range(0, len(prompts), settings.batch_size):
            replies += _generate_batch(
                model,
                tokenizer,
                prompts[start : start + settings.batch_size],
                config,
                streamer,
                stopping_criteria,
                logits_processor,
            )
        return replies
    finally:
        model.train(was_training)


def _generate_batch(
    model: Any,
    tokenizer: Any,
    prompts: list[list[int]],
    config: Any,
    streamer: Any,
    stopping_criteria: Any,
    logits_processor: Any = None,
) -> list[str]:
    import torch

    device = next(model.parameters()).device
    batch = tokenizer.pad({"input_ids": prompts}, padding_side="left", return_tensors="pt").to(device)
    with torch.inference_mode():
        output = model.generate(
            **batch,
            generation_config=config,
            streamer=streamer,
            stopping_criteria=stopping_criteria,
            logits_processor=logits_processor,
        )
    return tokenizer.batch_decode(output[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


def generate_replies(
    model: Any,
    tokenizer: Any,
    template: Template,
    prompts: Sequence[Conversation],
    settings: GenerationSettings,
    streamer: Any = None,
    stopping_criteria: Any = None,
) -> list[str]:
    """The assistant's reply to each conversation (ending with a user-side turn), header tails removed."""
    ids, tails = encode_prompts(tokenizer, template, prompts)
    replies = generate(model, tokenizer, ids, template.stop_token_ids(tokenizer), settings, streamer, stopping_criteria)
    return [reply.removeprefix(tail) for reply, tail in zip(replies, tails)]


def set_stop_tokens(model: Any, tokenizer: Any, template: Template) -> None:
    """Makes the model's own generation_config stop at the template's end token (and eos)."""
    stop_ids = template.stop_token_ids(tokenizer)
    generation = model.generation_config
    generation.eos_token_id = stop_ids if len(stop_ids) > 1 else stop_ids[0]
    generation.pad_token_id = tokenizer.pad_token_id
