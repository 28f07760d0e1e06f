#!/usr/bin/env bash
# One command: set up .venv (scripts/setup.sh) and run the whole test-suite on the CPU, both tiers: the fast
# tier (what plain `pytest` runs) and the integration tier (subprocesses, torchrun, long runs, the bench).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m pytest -q -m "integration or not integration" "$@"
