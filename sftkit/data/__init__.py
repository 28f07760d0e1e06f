"""The data stage: registry names -> tokenized, masked examples (not packed: TRL packs at train time).

Modules, in pipeline order: `spec` and `registry` (dataset_info.json entries, raw rows), `formats` (the
format registry: raw rows -> normalized conversations), `loader` (load, normalize, mix, split),
`model_source` (a model name -> a local folder or a reachable hub id, at once), `tokenizer` (the base
tokenizer prepared for the template), `masking` (tokens and -100 labels),
`pipeline` (`prepare_data`, `validate_data`, the tokenization cache), `stats` and `packing`
(statistics), `inspect` (`sftkit data preview` and `data export`).
"""

from sftkit.data.inspect import export, preview, render_example
from sftkit.data.loader import Conversations, check_sources, load_conversations
from sftkit.data.masking import IGNORE_INDEX
from sftkit.data.model_source import resolve_model
from sftkit.data.pipeline import PreparedData, plural, prepare_data, validate_data, validate_setup, validate_template
from sftkit.data.stats import DataStats
from sftkit.data.tokenizer import (
    load_tokenizer,
    load_tokenizer_and_template,
    resolve_template,
    run_template,
    template_origin,
)

__all__ = [
    "IGNORE_INDEX",
    "Conversations",
    "DataStats",
    "PreparedData",
    "check_sources",
    "export",
    "load_conversations",
    "load_tokenizer",
    "load_tokenizer_and_template",
    "plural",
    "prepare_data",
    "preview",
    "render_example",
    "resolve_model",
    "resolve_template",
    "run_template",
    "template_origin",
    "validate_data",
    "validate_setup",
    "validate_template",
]
