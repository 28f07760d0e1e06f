"""The data hook of sftkit's local lm-eval tasks: a JSONL file beside the task's YAML, read offline.

lm-eval calls `custom_dataset` with the task's metadata (which names the YAML it came from) and its
`dataset_kwargs`; a YAML of your own (`sftkit eval --include-path DIR`) can point at this function too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def jsonl_test_set(data_file: str, config_source: str = "", **_: Any) -> Any:
    """A DatasetDict with one `test` split: `data_file`, relative to the task's YAML unless absolute."""
    import datasets

    path = Path(data_file)
    if not path.is_absolute() and config_source and config_source != "inline":
        path = Path(config_source).parent / path
    return datasets.DatasetDict({"test": datasets.Dataset.from_json(str(path))})
