"""Runs one contestant's own command inside this process and records what the race measures, the same way
for every contestant: `python probe.py OUT.json ENTRY [ARGS...]` (ENTRY is `module:function` of a console
script, e.g. `llamafactory.cli:main`, or `-m:module` for a module run as a script).

It patches two transformers methods before the command starts, so every tool built on transformers' Trainer
is measured by this one counter: `Trainer.training_step` (each optimizer micro-step's start and end time, its
loss, and its trained tokens: the labels that are not -100 after the one-token shift, from the batch the
trainer really trains on) and `PreTrainedModel.from_pretrained` (the model load span). Stdlib and transformers
only: it runs in each peer's own virtual environment and never imports sftkit.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

START = time.time()
RECORD: dict[str, Any] = {"start": START, "steps": [], "loads": []}


def trained_tokens(labels: Any) -> int:
    """Label tokens that are not -100 after the shift (what the loss is taken on): the race's one count."""
    return int((labels[..., 1:] != -100).sum())


def _write(path: Path) -> None:
    RECORD["end"] = time.time()
    path.write_text(json.dumps(RECORD) + "\n", encoding="utf-8")


def install() -> None:
    import transformers
    from transformers import modeling_utils

    original_step = transformers.Trainer.training_step

    def training_step(self: Any, model: Any, inputs: Any, *args: Any, **kwargs: Any) -> Any:
        begin = time.time()
        labels = inputs.get("labels") if hasattr(inputs, "get") else None
        shift = inputs.get("shift_labels") if hasattr(inputs, "get") else None
        count = trained_tokens(labels) if labels is not None else None
        if count is None and shift is not None:  # already shifted: every position counts
            count = int((shift != -100).sum())
        mask = inputs.get("attention_mask") if hasattr(inputs, "get") else None
        ids = inputs.get("input_ids") if hasattr(inputs, "get") else None
        tokens = (
            int(mask.sum()) if mask is not None and mask.dim() == 2 else (int(ids.numel()) if ids is not None else None)
        )
        loss = original_step(self, model, inputs, *args, **kwargs)
        RECORD["steps"].append(
            {
                "begin": begin,
                "end": time.time(),
                "trained": count,
                "tokens": tokens,
                "width": int(ids.shape[-1]) if ids is not None else None,
                "rows": int(ids.shape[0]) if ids is not None else None,
                "loss": float(loss.detach().float()) if hasattr(loss, "detach") else None,
            }
        )
        return loss

    transformers.Trainer.training_step = training_step
    original_load = modeling_utils.PreTrainedModel.from_pretrained.__func__

    @classmethod  # type: ignore[misc]
    def from_pretrained(cls: Any, *args: Any, **kwargs: Any) -> Any:
        begin = time.time()
        model = original_load(cls, *args, **kwargs)
        RECORD["loads"].append({"begin": begin, "end": time.time(), "class": cls.__name__})
        return model

    modeling_utils.PreTrainedModel.from_pretrained = from_pretrained


def main() -> int:
    out, entry, *args = sys.argv[1:]
    install()
    code = 0
    try:
        if entry.startswith("-m:"):  # a module run as a script (`python -m`), in this process
            import runpy

            sys.argv = [entry[3:], *args]
            runpy.run_module(entry[3:], run_name="__main__", alter_sys=True)
        else:
            module, function = entry.split(":")
            sys.argv = [module.split(".")[0], *args]
            result = getattr(importlib.import_module(module), function)()
            code = result if isinstance(result, int) else 0
    except SystemExit as stop:
        code = stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    finally:
        RECORD["exit"] = code
        _write(Path(out))
    return code


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
