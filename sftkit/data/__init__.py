"""The data stage: registry names -> tokenized, masked examples (not packed: TRL packs at train time).

Modules, in pipeline order: `spec` and `registry` (dataset_info.json entries, raw rows), `formats` (the
format registry: raw rows -> normalized conversations), `loader` (load, normalize, mix, split),
`tokenizer` (the base tokenizer prepared for the template), `masking` (tokens and -100 labels),
`pipeline` (`prepare_data`, `validate_data`, the tokenization cache), `stats` and `packing`
(statistics), `inspect` (`sftkit data preview` and `data export`).
"""

from sftkit.data.inspect import export, preview, render_example
from sftkit.data.loader import Conversations, load_conversations
from sftkit.data.masking import IGNORE_INDEX
from sftkit.data.pipeline import PreparedData, prepare_data, validate_data, validate_template
from sftkit.data.stats import DataStats
from sftkit.data.tokenizer import (load_tokenizer, load_tokenizer_and_template, resolve_template, run_template,
                                   template_origin)

__all__ = ["IGNORE_INDEX", "Conversations", "DataStats", "PreparedData", "export", "load_conversations",
           "load_tokenizer", "load_tokenizer_and_template", "prepare_data", "preview", "render_example",
           "resolve_template", "run_template", "template_origin", "validate_data", "validate_template"]
