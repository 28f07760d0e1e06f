"""Library messages that are expected in every sftkit run and tell the user nothing to act on.

Each one is silenced by its exact text or logger, so any other warning from the same library still shows.
`quiet_known_noise` runs once per process, before the libraries are imported.
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

# (category, start of the message, why it is noise here)
_WARNINGS = (
    (
        UserWarning,
        "Setting `save_embedding_layers` to `True`",
        "PEFT, at every save: sftkit grows the embeddings for the template's tokens on purpose, so their rows "
        "must be saved with the adapter",
    ),
    (
        FutureWarning,
        "`is_gradient_checkpointing` is deprecated",
        "transformers' deprecation, triggered inside PEFT and TRL, not by anything in a config",
    ),
    (
        DeprecationWarning,
        "`torch.jit.script_method` is deprecated",
        "torch's deprecation, raised at import by a library's decorator; nothing sftkit or a user calls",
    ),
)
# (logger, start of the message, why it is noise here)
_LOG_RECORDS = (
    (
        "transformers.modeling_utils",
        "The new embeddings will be initialized from a multivariate normal",
        "transformers' mean resizing of the rows added for the template's tokens: the initialisation sftkit wants",
    ),
    (
        "transformers.trainer_utils",
        "mtime may not be reliable",
        "checkpoints saved within the same second (tiny models); the order falls back to step numbers",
    ),
    (
        "datasets.arrow_dataset",
        "num_proc must be <= ",
        "datasets, at every map of a split smaller than preprocessing_num_workers; the start summary notes it once",
    ),
)
# bitsandbytes on an AVX512-BF16 CPU looks for an optional 4-bit kernel package at import; sftkit runs no
# 4-bit kernel on a CPU, and its 8-bit optimizer does not use it.
_QUIET_LOGGERS = ("bitsandbytes.backends.cpu.ops",)


class _DropMessages(logging.Filter):
    def __init__(self, prefixes: list[str]) -> None:
        super().__init__()
        self.prefixes = tuple(prefixes)

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Silences the messages listed above (warnings filters, logger filters and levels).

    Progress bars of the datasets library (`Tokenizing`) are kept on a terminal only: written to a file,
    their carriage returns are noise.
    """
    if not sys.stderr.isatty():
        os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    for category, message, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name in {name for name, _, _ in _LOG_RECORDS}:
        logging.getLogger(name).addFilter(_DropMessages([msg for n, msg, _ in _LOG_RECORDS if n == name]))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def quiet_loading_bars() -> None:
    """Turns off transformers' own bars ("Loading weights", "Writing model shards"), keeping the hub's download bars.

    Both are one-off steps of a second or two that every command would show; a download can take minutes.
    Imports transformers: call it where a model is about to load.
    """
    import huggingface_hub.utils
    import transformers

    if transformers.utils.logging.is_progress_bar_enabled():
        downloads = not huggingface_hub.utils.are_progress_bars_disabled()
        transformers.utils.logging.disable_progress_bar()  # also turns off the hub's
        if downloads:
            huggingface_hub.utils.enable_progress_bars()


@contextmanager
def no_dataset_bars() -> Iterator[None]:
    """No datasets progress bar inside the block (internal passes such as packing, which the user did not ask for)."""
    import datasets

    enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if enabled:
            datasets.enable_progress_bars()
