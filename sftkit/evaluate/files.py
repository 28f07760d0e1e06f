"""Files the evaluation stage writes: JSON and text, each replaced only once complete."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------------------- files

def write_json(path: Path, data: dict[str, Any]) -> None:
    """Writes `data` as indented JSON (NaN/inf as null), replacing `path` only once complete."""
    write_text(path, json.dumps(_finite(data), indent=2, ensure_ascii=False) + "\n")


def write_text(path: Path, text: str) -> None:
    """Writes to a temporary file beside `path`, then renames it: never a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity: they become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value
