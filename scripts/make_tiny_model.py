"""Build the tiny ERNIE-architecture model and tokenizer: `python scripts/make_tiny_model.py OUT_DIR`.

configs/tiny_smoke.yaml expects it at models/tiny-ernie (the README's demo command builds it there).
It uses a wide initialisation (0.3) so the one-minute demo visibly learns; the test fixture keeps 0.02.
"""

from __future__ import annotations

import sys

from sftkit.tiny import build_tiny_model

if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python scripts/make_tiny_model.py OUT_DIR")
    print(f"tiny model written to {build_tiny_model(sys.argv[1], initializer_range=0.3)}")
