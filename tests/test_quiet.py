"""sftkit.quiet: the known library messages are dropped, and nothing else from the same sources."""

from __future__ import annotations

import logging
import warnings

import pytest

from sftkit.quiet import quiet_known_noise


@pytest.fixture
def quiet():
    with warnings.catch_warnings():
        quiet_known_noise()
        yield
    for name in ("transformers.modeling_utils", "transformers.trainer_utils"):
        logging.getLogger(name).filters.clear()
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.NOTSET)


def test_known_warnings_are_dropped_and_others_kept(quiet) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        quiet_known_noise()  # simplefilter above reset the filters, as a test runner may
        warnings.warn(
            "Setting `save_embedding_layers` to `True` as the embedding layer has been resized",
            UserWarning,
            stacklevel=1,
        )
        warnings.warn(
            "`is_gradient_checkpointing` is deprecated and will be removed in v6.", FutureWarning, stacklevel=1
        )
        warnings.warn(
            "`torch.jit.script_method` is deprecated. Please switch to `torch.compile` or `torch.export`.",
            DeprecationWarning,
            stacklevel=1,
        )
        warnings.warn("Setting something else", UserWarning, stacklevel=1)
        warnings.warn("`other_attribute` is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["Setting something else", "`other_attribute` is deprecated"]


def test_known_log_records_are_dropped_and_others_kept(quiet, caplog: pytest.LogCaptureFixture) -> None:
    resize = logging.getLogger("transformers.modeling_utils")
    with caplog.at_level(logging.WARNING):
        resize.warning("The new embeddings will be initialized from a multivariate normal distribution that ...")
        resize.warning("Some weights of the model checkpoint were not used")
        logging.getLogger("transformers.trainer_utils").warning("mtime may not be reliable on this filesystem")
        logging.getLogger("bitsandbytes.backends.cpu.ops").warning("Failed to load CPU gemm_4bit_forward")
        logging.getLogger("bitsandbytes.backends.cpu.ops").error("a real failure")
    assert [record.getMessage() for record in caplog.records] == [
        "Some weights of the model checkpoint were not used",
        "a real failure",
    ]
