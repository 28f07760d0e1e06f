"""Library messages that are expected in every sftkit run and tell the user nothing to act on.

Each one is silenced by its exact text or logger, so any other warning from the same library still shows.
`quiet_known_noise` runs once per process, before the libraries are imported.
"""

from __future__ import annotations

import logging
import re
import warnings

# (category, start of the message, why it is noise here)
_WARNINGS = (
    (UserWarning, "Setting `save_embedding_layers` to `True`",
     "PEFT, at every save: sftkit grows the embeddings for the template's tokens on purpose, so their rows "
     "must be saved with the adapter"),
    (FutureWarning, "`is_gradient_checkpointing` is deprecated",
     "transformers' deprecation, triggered inside PEFT and TRL, not by anything in a config"),
)
# (logger, start of the message, why it is noise here)
_LOG_RECORDS = (
    ("transformers.modeling_utils", "The new embeddings will be initialized from a multivariate normal",
     "transformers' mean resizing of the rows added for the template's tokens: the initialisation sftkit wants"),
    ("transformers.trainer_utils", "mtime may not be reliable",
     "checkpoints saved within the same second (tiny models); the order falls back to step numbers"),
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
    """Silences the messages listed above (warnings filters, logger filters and levels)."""
    for category, message, _why in _WARNINGS:
        warnings.filterwarnings("ignore", message=re.escape(message), category=category)
    for name in {name for name, _, _ in _LOG_RECORDS}:
        logging.getLogger(name).addFilter(_DropMessages([msg for n, msg, _ in _LOG_RECORDS if n == name]))
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)

