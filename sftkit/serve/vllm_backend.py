"""The vLLM backend (`--backend vllm`): vLLM's engine generates, sftkit still builds the prompt.

The prompt ids come from the trained template exactly as with the transformers backend (`prompt_ids`) and go
to vLLM as token ids, so both backends see the same prompt; the template's stop tokens are vLLM's
`stop_token_ids`. vLLM loads a complete model only: a LoRA run directory is merged first (`sftkit merge`).
It runs one job at a time on the worker thread, through vLLM's offline `LLM.generate`, which returns a reply
whole: a streamed answer arrives as one chunk.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.model import load_complete_tokenizer
from sftkit.run_dir import has_adapter, shell_command
from sftkit.serve.engine import Delta, Failed, Finished, Job, Started, first_stop, prompt_ids, token_budget
from sftkit.serve.protocol import ApiError, Usage
from sftkit.templates import prepare_tokenizer


class VllmBackend:
    """A merged or base model in vLLM's engine, prompted with the trained template's ids."""

    def __init__(self, model: str) -> None:
        from transformers import AutoConfig
        from vllm import LLM

        if has_adapter(Path(model)):
            raise SftkitError(f"{model}: --backend vllm serves a complete model; merge the adapter first "
                              f"({shell_command('merge', model)}) and serve the merged folder")
        model, self.tokenizer, self.template = load_complete_tokenizer(model)
        config = AutoConfig.from_pretrained(model)
        if prepare_tokenizer(self.tokenizer, self.template) and len(self.tokenizer) > config.vocab_size:
            raise SftkitError(f"{model}: the template {self.template.name} needs control tokens this model has no "
                              "embedding rows for; serve a model trained with it (merged), or use --backend "
                              "transformers")
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.context: int | None = getattr(config, "max_position_embeddings", None)
        self.llm = LLM(model=model, tokenizer=model, max_model_len=self.context)

    def run_batch(self, jobs: list[Job]) -> None:
        """One job after another: vLLM batches inside its own engine."""
        for job in jobs:
            try:
                self.run(job)
            except ApiError as exc:
                job.send(Failed(exc))

    def run(self, job: Job) -> None:
        from vllm import SamplingParams

        request = job.request
        ids, tail = prompt_ids(self.tokenizer, self.template, request)
        budget = token_budget(len(ids), request.max_tokens, self.context)
        job.send(Started(len(ids)))
        params = SamplingParams(n=1, temperature=request.temperature, top_p=request.top_p, max_tokens=budget,
                                seed=request.seed, stop=request.stops or None, stop_token_ids=self.stop_ids,
                                skip_special_tokens=True)
        output: Any = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0].outputs[0]
        # stop strings are cut here, after the header tail is removed, as the transformers backend does
        reply = output.text.removeprefix(tail)
        cut = first_stop(reply, request.stops)
        if cut is not None:
            reply = reply[:cut]
        if request.stream and reply:
            job.send(Delta(reply))
        finish = "stop" if cut is not None or output.finish_reason != "length" else "length"
        job.send(Finished(reply, finish, Usage(len(ids), len(output.token_ids))))
