#!/usr/bin/env bash
# One command: set up .venv, build the tiny ERNIE-architecture model, fine-tune it on the bundled data,
# merge the adapter, chat with the result, serve it (OpenAI's API, asked once with the official client)
# and export it to GGUF with an Ollama Modelfile. A few minutes on a 2-core CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
# llama.cpp compiles for many minutes: the demo does without it (the tests build it; see docs/deploy.md)
SFTKIT_NO_LLAMA_CPP=${SFTKIT_NO_LLAMA_CPP:-1} bash scripts/setup.sh
export HF_HUB_OFFLINE=1
[ -f models/tiny-ernie/config.json ] || .venv/bin/python scripts/make_tiny_model.py models/tiny-ernie
.venv/bin/sftkit train configs/tiny_smoke.yaml --overwrite
.venv/bin/sftkit merge runs/tiny-smoke --overwrite
.venv/bin/sftkit chat runs/tiny-smoke/merged --prompt "What colour is snow?"

# Deploy: the same model behind an OpenAI-compatible endpoint on loopback, asked by the openai client
PORT=${SFTKIT_DEMO_PORT:-8765}
.venv/bin/sftkit serve runs/tiny-smoke/merged --port "$PORT" > runs/tiny-smoke/serve.log 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
.venv/bin/python - "$PORT" <<'PY'
import sys, time
import httpx
from openai import OpenAI
url = f"http://127.0.0.1:{sys.argv[1]}"
for _ in range(240):
    try:
        if httpx.get(url + "/health", timeout=2).status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.5)
else:
    sys.exit("sftkit serve did not start: see runs/tiny-smoke/serve.log")
client = OpenAI(base_url=url + "/v1", api_key="none")
reply = client.chat.completions.create(model="runs/tiny-smoke/merged", temperature=0,
                                       messages=[{"role": "user", "content": "What colour is snow?"}])
print(f"served answer ({url}/v1/chat/completions): {reply.choices[0].message.content}")
PY
kill $SERVER; wait $SERVER 2>/dev/null || true

# Export: a GGUF file for llama.cpp and a Modelfile for `ollama create`; checked by llama.cpp when it is installed
verify=--no-verify
.venv/bin/python -c "import llama_cpp" 2>/dev/null && verify=
.venv/bin/sftkit export runs/tiny-smoke --format ollama --outtype f16 --out runs/tiny-smoke/ollama --overwrite $verify
