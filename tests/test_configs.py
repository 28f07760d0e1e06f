"""Every shipped config validates, and its comments are exactly the schema's documentation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sftkit.config import commented_yaml, load_config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
YAMLS = sorted(CONFIGS.glob("*.yaml"))


@pytest.mark.parametrize("path", YAMLS, ids=lambda p: p.name)
def test_config_validates_and_its_comments_never_drift(path: Path) -> None:
    load_config(path)
    text = path.read_text(encoding="utf-8")
    assert text == commented_yaml(yaml.safe_load(text)), f"regenerate {path.name} with commented_yaml"
