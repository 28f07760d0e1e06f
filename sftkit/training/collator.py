"""Collating packed rows for kernels that need a mask: one packed sequence per batch row."""

from __future__ import annotations

from typing import Any

from sftkit.data import IGNORE_INDEX

# Batch key the collator sets to the number of real (not padding) tokens, since the batch carries no
# attention mask (packed rows: transformers then tells examples apart by position_ids). Never a model input.
REAL_TOKENS_KEY = "sftkit_real_tokens"


class PackedRowsCollator:
    """Collates packed sequences as the rows of a batch, their examples told apart by position_ids.

    TRL's padding-free collator flattens a whole batch into one row, which only variable-length kernels
    (flash-attention) handle cheaply: sdpa and eager would build one dense mask over batch x cutoff_len
    tokens (32 x 4096 tokens: a 16 GiB mask, and 32x the attention work). Row by row, the mask is
    batch x cutoff_len^2 and transformers still keeps packed examples from attending to each other.
    """

    def __init__(self, pad_token_id: int) -> None:
        from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

        self._collate = DataCollatorForLanguageModeling(pad_token_id=pad_token_id, return_position_ids=True)

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self._collate(examples)
        # without an attention mask, transformers splits each row where position_ids restart
        batch[REAL_TOKENS_KEY] = batch.pop("attention_mask").sum()  # for tokens_seen: rows are padded
        # an example's first token is never a target predicted from the previous example
        batch["labels"][batch["position_ids"] == 0] = IGNORE_INDEX
        return batch
