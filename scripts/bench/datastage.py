"""The data stage alone, sftkit's against LLaMA-Factory's, on the same rows: tokenize + mask with a fresh cache.

`python datastage.py TOOL CONFIG.json` in the tool's own environment prints one JSON line: rows and seconds of
sftkit's `prepare_data`, or of LLaMA-Factory's `get_dataset` (its loader, alpaca converter, template and
supervised preprocessing), each started after the tokenizer is loaded.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any


def sftkit_stage(config: dict[str, Any]) -> dict[str, Any]:
    from sftkit.config import validate_config
    from sftkit.data import load_tokenizer, prepare_data
    from sftkit.templates import get_template

    cfg = validate_config(config)
    template = get_template(cfg.template)
    tokenizer = load_tokenizer(cfg, template)
    start = time.perf_counter()
    data = prepare_data(cfg, tokenizer, template)
    return {"rows": len(data.train), "seconds": round(time.perf_counter() - start, 3)}


def llamafactory_stage(config: dict[str, Any]) -> dict[str, Any]:
    from llamafactory.data import get_dataset, get_template_and_fix_tokenizer
    from llamafactory.hparams import get_train_args
    from llamafactory.model import load_tokenizer

    model_args, data_args, training_args, _, _ = get_train_args(config)
    module = load_tokenizer(model_args)
    template = get_template_and_fix_tokenizer(module["tokenizer"], data_args)
    start = time.perf_counter()
    data = get_dataset(template, model_args, data_args, training_args, stage="sft", **module)
    return {"rows": len(data["train_dataset"]), "seconds": round(time.perf_counter() - start, 3)}


if __name__ == "__main__":
    tool, path = sys.argv[1:3]
    with open(path, encoding="utf-8") as handle:
        cfg = json.load(handle)
    result = sftkit_stage(cfg) if tool == "sftkit" else llamafactory_stage(cfg)
    print("DATASTAGE " + json.dumps(result), flush=True)
