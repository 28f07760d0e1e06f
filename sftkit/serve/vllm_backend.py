"""The vLLM backend (`--backend vllm`): vLLM's engine generates, sftkit still builds the prompt.

The prompt ids come from the trained template exactly as with the transformers backend (`prompt_ids`) and go
to vLLM as token ids, so both backends see the same prompt; the template's stop tokens are vLLM's
`stop_token_ids`. vLLM loads a complete model only: a LoRA run directory is merged first (`sftkit merge`).
It runs one job at a time on the worker thread, through vLLM's offline `LLM.generate`, which returns a reply
whole: a streamed answer arrives as one chunk per choice.

The agent features map onto vLLM's own: `n`, `logprobs` (the sampled token and the top ones, vLLM's raw
log-probabilities), `prompt_logprobs` for an echoed prompt, its structured outputs for a JSON reply (and for a
forced call in Llama 3.1's bare-JSON format); tool calls are read back with sftkit's parser of the template's
format, as the transformers backend does. Not run in sftkit's CI (no GPU there).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.model import load_complete_tokenizer
from sftkit.run_dir import has_adapter, shell_command
from sftkit.serve.decoding import call_schema
from sftkit.serve.engine import (
    Answer,
    Delta,
    Failed,
    Finished,
    Generation,
    Job,
    Started,
    TokenLogprob,
    first_stop,
    prompt_ids,
    token_budget,
)
from sftkit.serve.protocol import ApiError, Usage
from sftkit.templates import prepare_tokenizer
from sftkit.templates.tool_calls import parse_tool_calls, tool_call_format


class VllmBackend:
    """A merged or base model in vLLM's engine, prompted with the trained template's ids."""

    def __init__(self, model: str) -> None:
        from transformers import AutoConfig
        from vllm import LLM

        if has_adapter(Path(model)):
            raise SftkitError(
                f"{model}: --backend vllm serves a complete model; merge the adapter first "
                f"({shell_command('merge', model)}) and serve the merged folder"
            )
        model, self.tokenizer, self.template = load_complete_tokenizer(model)
        config = AutoConfig.from_pretrained(model)
        if prepare_tokenizer(self.tokenizer, self.template) and len(self.tokenizer) > config.vocab_size:
            raise SftkitError(
                f"{model}: the template {self.template.name} needs control tokens this model has no "
                "embedding rows for; serve a model trained with it (merged), or use --backend "
                "transformers"
            )
        self.stop_ids = self.template.stop_token_ids(self.tokenizer)
        self.tool_format = tool_call_format(self.template)
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
        echo_only = request.max_tokens == 0  # vLLM generates at least one token: it is dropped
        budget = 1 if echo_only else token_budget(len(ids), request.max_tokens, self.context)
        job.send(Started(len(ids)))
        scored_prompt = request.echo and request.logprobs is not None
        params = SamplingParams(
            n=request.n,
            temperature=request.temperature,
            top_p=request.top_p,
            max_tokens=budget,
            seed=request.seed,
            stop=request.stops or None,
            stop_token_ids=self.stop_ids,
            skip_special_tokens=True,
            logprobs=request.logprobs,
            prompt_logprobs=request.logprobs if scored_prompt else None,
            **self._structured(request),
        )
        result: Any = self.llm.generate([{"prompt_token_ids": ids}], params, use_tqdm=False)[0]
        echo = self.tokenizer.decode(ids, skip_special_tokens=False) if request.echo else ""
        echo_scores = self._prompt_scores(ids, result.prompt_logprobs, request.logprobs) if scored_prompt else []
        answers = [
            self._answer(request, output, index, tail, echo, echo_scores, echo_only)
            for index, output in enumerate(result.outputs)
        ]
        for answer in answers:
            if request.stream and (answer.text or answer.logprobs):
                job.send(Delta(answer.text if answer.tool_calls is None else "", answer.index, answer.logprobs))
        first = answers[0]
        job.send(Finished(first.text, first.finish_reason, Usage(len(ids), sum(a.tokens for a in answers)), answers))

    def _answer(
        self,
        request: Generation,
        output: Any,
        index: int,
        tail: str,
        echo: str,
        echo_scores: list[TokenLogprob | None],
        echo_only: bool,
    ) -> Answer:
        """One vLLM output as a choice: stop strings cut after the header tail (as the transformers backend
        does), tool calls parsed from the template's format, log-probabilities in sftkit's shape."""
        if echo_only:
            return Answer(index, echo, "length", 0, echo_scores or None, prompt_chars=len(echo))
        reply = output.text.removeprefix(tail)
        cut = first_stop(reply, request.stops)
        if cut is not None:
            reply = reply[:cut]
        finish = "stop" if cut is not None or output.finish_reason != "length" else "length"
        answer = Answer(index, echo + reply, finish, len(output.token_ids), prompt_chars=len(echo))
        if request.logprobs is not None:
            answer.logprobs = echo_scores + [
                self._entry(token, step, request.logprobs)
                for token, step in zip(output.token_ids, output.logprobs or [])
                if token not in self.stop_ids
            ]
        if request.tool_choice != "none" and self.tool_format:
            raw = self.tokenizer.decode(
                [t for t in output.token_ids if t not in self.stop_ids], skip_special_tokens=False
            ).removeprefix(tail)
            content, calls = parse_tool_calls(raw, self.tool_format)
            if calls:
                answer.text, answer.tool_calls, answer.finish_reason = content.strip(), calls, "tool_calls"
        return answer

    def _entry(self, token: int, step: dict[int, Any], top: int) -> TokenLogprob:
        """vLLM's {token id: Logprob} of one step as (text, log-probability, the `top` most likely)."""

        def text(tid: int) -> str:
            return self.tokenizer.decode([tid], skip_special_tokens=False)

        ranked = sorted(step.items(), key=lambda item: item[1].rank)[:top]
        return text(token), float(step[token].logprob), [(text(tid), float(lp.logprob)) for tid, lp in ranked]

    def _prompt_scores(self, ids: list[int], prompt_logprobs: list[Any], top: int | None) -> list[TokenLogprob | None]:
        """An echoed prompt's tokens (vLLM's prompt_logprobs: None for the first, which nothing precedes)."""
        first = (self.tokenizer.decode(ids[:1], skip_special_tokens=False), None, None)
        return (
            [first]
            + [
                self._entry(token, step, top or 0)  # type: ignore[list-item]
                for token, step in zip(ids[1:], prompt_logprobs[1:])
            ]
        )

    def _structured(self, request: Generation) -> dict[str, Any]:
        """vLLM's structured outputs for a JSON reply or a forced call in bare-JSON (Llama 3.1) format.

        Raises:
            ApiError: a forced call in a format vLLM's JSON constraint cannot write (hermes, mistral).
        """
        schema = request.reply_schema
        if schema is None and request.tools and request.tool_choice not in ("none", "auto"):
            if self.tool_format != "llama3":
                raise ApiError(
                    400,
                    "tool_choice: with --backend vllm a call can be forced only in Llama 3.1's JSON "
                    'format; use tool_choice "auto" or --backend transformers',
                    "tool_choice",
                )
            names = (
                [t["function"]["name"] for t in request.tools]
                if request.tool_choice == "required"
                else [request.tool_choice]
            )
            schema = call_schema(request.tools, names, "parameters")
        if schema is None:
            return {}
        try:  # vLLM >= 0.10
            from vllm.sampling_params import StructuredOutputsParams

            return {"structured_outputs": StructuredOutputsParams(json=schema)}
        except ImportError:
            from vllm.sampling_params import GuidedDecodingParams

            return {"guided_decoding": GuidedDecodingParams(json=schema)}
