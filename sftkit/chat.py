"""Chat stage: talk to a trained, merged or base model with the template it was trained on.

Prompts are built by `encode_prompt`, the same template definition that rendered the training data,
and generation stops at the template's end token (or eos). Three ways in:

- `--prompt TEXT`: answer it, print the answer, exit.
- stdin not a terminal (and no `--repl`): every line is a prompt answered independently (a fresh
  conversation with the `--system` prompt each time, so answers do not depend on line order), one
  answer printed per prompt.
- a terminal (or `--repl`): a multi-turn conversation that streams tokens; `/reset` clears it,
  `/system TEXT` sets the system prompt (`/system` alone removes it), `/exit` or Ctrl-D leaves,
  Ctrl-C stops the current answer and keeps the conversation.

`load_for_inference` is shared with `sftkit eval` / `sftkit predict`.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from sftkit.errors import SftkitError

if TYPE_CHECKING:
    from sftkit.data.template import Template
    from sftkit.model import Precision

PROMPT = ">>> "
COMMANDS = "commands: /reset (new conversation), /system TEXT (set the system prompt), /exit"
# A conversation used only to recognise which template a tokenizer's chat_template renders.
_RECOGNITION_PROBE = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"},
                      {"role": "assistant", "content": "A"}, {"role": "user", "content": "V"}]


@dataclass
class GenerationSettings:
    """How answers are sampled: temperature 0 is greedy decoding."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0


@dataclass
class ChatSession:
    """A conversation with a loaded model: the system prompt and the turns so far."""

    model: Any
    tokenizer: Any
    template: Template
    settings: GenerationSettings
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)

    def ask(self, text: str, streamer: Any = None, stop: StopOnInterrupt | None = None) -> str:
        """Answers `text` as the next user turn and records both turns."""
        turns = self.history + [{"role": "user", "content": text}]
        system = [{"role": "system", "content": self.system}] if self.system else []
        reply = generate_reply(self.model, self.tokenizer, self.template, system + turns, self.settings,
                               streamer=streamer, stop=stop)
        self.history = turns + [{"role": "assistant", "content": reply}]
        return reply


def chat(model: str, system: str | None = None, prompt: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, repl: bool = False) -> None:
    """Answers prompts from a run directory, merged model, or base model.

    Args:
        model: run directory (LoRA adapter or full weights), merged model directory, or base model
            path / hub id.
        system: system prompt (default: the run's default_system, as in training).
        prompt: answer this prompt and return, instead of reading stdin.
        max_new_tokens: most tokens per answer.
        temperature: 0 for greedy decoding; otherwise sampling with `top_p`.
        top_p: nucleus sampling mass.
        seed: seed of the sampling.
        repl: run the interactive loop even when stdin is not a terminal.

    Raises:
        SftkitError: bad generation settings, or a model that cannot be loaded.
    """
    from transformers import set_seed

    settings = _check_settings(max_new_tokens, temperature, top_p)
    lm, tokenizer, template = load_for_inference(model)
    set_seed(seed)
    session = ChatSession(lm, tokenizer, template, settings, system=system or _trained_default_system(model))
    if prompt is not None:
        print(session.ask(prompt))
    elif repl or sys.stdin.isatty():
        run_repl(session, _terminal_reader() if sys.stdin.isatty() else _stream_reader(sys.stdin, sys.stdout),
                 sys.stdout)
    else:
        _answer_lines(session, sys.stdin)


def _check_settings(max_new_tokens: int, temperature: float, top_p: float) -> GenerationSettings:
    problems = [
        "--max-new-tokens: must be at least 1" if max_new_tokens < 1 else "",
        "--temperature: must be 0 (greedy) or positive" if temperature < 0 else "",
        "--top-p: must be in (0, 1]" if not 0 < top_p <= 1 else "",
    ]
    if any(problems):
        raise SftkitError(*problems)
    return GenerationSettings(max_new_tokens, temperature, top_p)


# ---------------------------------------------------------------------------- loading

def load_for_inference(model: str) -> tuple[Any, Any, Template]:
    """Loads a model for generation, with its tokenizer and chat template, on the best device.

    A run directory with a LoRA adapter loads its base (from sftkit_config.yaml) with the adapter on
    top; anything else loads with `from_pretrained`. The template is the run's (sftkit_config.yaml),
    else the one whose rendering the tokenizer's chat_template reproduces, else chatml; a note on
    stderr says which and why.

    Args:
        model: run directory, merged model directory, or base model path / hub id.

    Returns:
        (model in eval mode, tokenizer prepared for the template, template).

    Raises:
        SftkitError: nothing loadable at `model`.
    """
    from sftkit.merge import ADAPTER_CONFIG, RUN_CONFIG, load_adapter_run

    path = Path(model)
    precision = _inference_precision()
    if (path / ADAPTER_CONFIG).is_file():
        run = load_adapter_run(path, precision=precision)
        _note(f"template {run.template.name} (from {path / RUN_CONFIG}); base {run.cfg.model_name_or_path} "
              f"+ adapter {path}")
        return _to_device(run.model), run.tokenizer, run.template
    tokenizer = _load_tokenizer(model)
    template, reason = _template_for(path, tokenizer)
    _note(f"template {template.name} ({reason})")
    lm = _load_plain_model(model, tokenizer, template, precision)
    return _to_device(lm), tokenizer, template


def _trained_default_system(model: str) -> str | None:
    """The run's default_system: training gave it to every row without a system prompt."""
    from sftkit.merge import RUN_CONFIG, read_run_config

    path = Path(model)
    system = read_run_config(path).default_system if (path / RUN_CONFIG).is_file() else None
    if system:
        _note(f"system prompt {system!r} (the run's default_system; --system replaces it)")
    return system


def _inference_precision() -> Precision:
    """bf16 on a GPU that has it, else fp32 (CPU half precision is slow and less exact)."""
    import torch

    from sftkit.model import Precision

    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return Precision("bfloat16", "cuda", "bf16 on cuda")
    return Precision("float32", "cuda" if torch.cuda.is_available() else "cpu", "fp32")


def _to_device(model: Any) -> Any:
    import torch

    model.eval()
    return model.to("cuda") if torch.cuda.is_available() else model


def _load_tokenizer(model: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model)
    except (OSError, ValueError) as exc:
        raise SftkitError(f"{model}: cannot load a tokenizer ({_first_line(exc)}); pass a run directory, a "
                          "merged model directory, or a model path / hub id with network access") from None


def _template_for(path: Path, tokenizer: Any) -> tuple[Template, str]:
    """The run config's template, else the one the tokenizer's chat_template renders, else chatml."""
    from sftkit.config import TEMPLATES
    from sftkit.data.template import get_template
    from sftkit.merge import RUN_CONFIG, read_run_config

    if (path / RUN_CONFIG).is_file():
        return get_template(read_run_config(path).template), f"from {path / RUN_CONFIG}"
    for name in TEMPLATES:
        if _renders_like(tokenizer, get_template(name)):
            return get_template(name), "recognised from the tokenizer's chat_template"
    reason = "no chat_template" if not tokenizer.chat_template else "the chat_template is not one of sftkit's"
    return get_template("chatml"), f"default: {reason}"


def _renders_like(tokenizer: Any, template: Template) -> bool:
    """Whether the tokenizer's chat_template gives the template's generation prompt."""
    from jinja2 import TemplateError

    if not tokenizer.chat_template:
        return False
    try:
        rendered = tokenizer.apply_chat_template(_RECOGNITION_PROBE, tokenize=False, add_generation_prompt=True)
    except (TemplateError, ValueError):
        return False
    return rendered == template.generation_prompt(_RECOGNITION_PROBE)


def _load_plain_model(model: str, tokenizer: Any, template: Template, precision: Precision) -> Any:
    """A complete model; a base model lacking the template's control tokens gets them (new rows)."""
    from transformers import AutoModelForCausalLM

    from sftkit.data.template import prepare_tokenizer
    from sftkit.model import grow_embeddings

    try:
        lm = AutoModelForCausalLM.from_pretrained(model, dtype=precision.dtype, use_safetensors=True)
    except (OSError, ValueError) as exc:
        raise SftkitError(f"{model}: cannot load a causal LM ({_first_line(exc)})") from None
    if prepare_tokenizer(tokenizer, template):
        # As training starts: untrained rows for the new tokens, so a base model can be compared.
        _note(f"added {template.name}'s control tokens to the tokenizer (untrained embedding rows)")
    grow_embeddings(lm, len(tokenizer))
    return lm


# ---------------------------------------------------------------------------- generation

class StopOnInterrupt:
    """A stopping criterion that ends generation once Ctrl-C (SIGINT) arrives while armed.

    Duck-typed for `StoppingCriteriaList`, so this module imports without transformers.
    """

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.requested, dtype=torch.bool, device=input_ids.device)

    @contextmanager
    def armed(self) -> Iterator[StopOnInterrupt]:
        """Within the block, SIGINT sets the flag instead of raising KeyboardInterrupt."""
        self.requested = False
        previous = signal.signal(signal.SIGINT, lambda _signum, _frame: setattr(self, "requested", True))
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def generate_reply(model: Any, tokenizer: Any, template: Template, messages: list[dict[str, str]],
                   settings: GenerationSettings, tools: str | None = None, streamer: Any = None,
                   stop: StopOnInterrupt | None = None) -> str:
    """Generates the assistant's reply to a conversation that ends with a user turn.

    Args:
        model: a causal LM (or PEFT model) in eval mode.
        tokenizer: its tokenizer, prepared for `template`.
        template: the chat template the model was trained with.
        messages: normalized messages ending with a user-side turn.
        settings: token budget and sampling.
        tools: JSON string of tool schemas, or None.
        streamer: a transformers streamer that receives the tokens as they come.
        stop: a flag that ends generation early (Ctrl-C in the REPL).

    Returns:
        The reply text, without the end token.
    """
    import torch
    from transformers import StoppingCriteriaList

    from sftkit.data.masking import encode_prompt

    ids = encode_prompt(tokenizer, template, messages, tools)
    device = next(model.parameters()).device
    output = model.generate(
        input_ids=torch.tensor([ids], device=device), attention_mask=torch.ones(1, len(ids), device=device),
        generation_config=_generation_config(tokenizer, template, settings), streamer=streamer,
        stopping_criteria=StoppingCriteriaList([stop] if stop else []))
    reply = tokenizer.decode(output[0, len(ids):], skip_special_tokens=True)
    return reply.removeprefix(_header_tail(tokenizer, template, messages, tools, ids))


def _generation_config(tokenizer: Any, template: Template, settings: GenerationSettings) -> Any:
    """A complete GenerationConfig, so sampling defaults shipped with a model never apply unasked."""
    from transformers import GenerationConfig

    sampling = ({"do_sample": True, "temperature": settings.temperature, "top_p": settings.top_p}
                if settings.temperature > 0 else {"do_sample": False})
    stop_ids = template.stop_token_ids(tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    return GenerationConfig(max_new_tokens=settings.max_new_tokens, eos_token_id=stop_ids, pad_token_id=pad,
                            **sampling)


def _header_tail(tokenizer: Any, template: Template, messages: list[dict[str, str]], tools: str | None,
                 prompt_ids: list[int]) -> str:
    """Header text that `encode_prompt` leaves for the model to generate, e.g. ERNIE's "Assistant: " space.

    The model generates it merged into the reply's first token; it is not part of the reply.
    """
    full = tokenizer(template.generation_prompt(messages, tools), add_special_tokens=False).input_ids
    return tokenizer.decode(full[len(prompt_ids):]) if full[:len(prompt_ids)] == prompt_ids else ""


# ---------------------------------------------------------------------------- the three ways in

def run_repl(session: ChatSession, read: Callable[[str], str], out: TextIO) -> None:
    """The interactive loop: streams answers, handles /reset, /system, /exit, Ctrl-C and Ctrl-D.

    Args:
        session: the conversation.
        read: shows a prompt and returns one line; raises EOFError at the end (Ctrl-D).
        out: where answers and messages go.
    """
    stop = StopOnInterrupt()
    out.write(f"{COMMANDS}\n")
    while True:
        try:
            line = read(PROMPT).strip()
        except EOFError:
            out.write("\n")
            return
        except KeyboardInterrupt:  # Ctrl-C at the prompt abandons the line, as in a shell
            out.write("\n")
            continue
        if line == "/exit":
            return
        if line:
            _handle(session, line, out, stop)


def _handle(session: ChatSession, line: str, out: TextIO, stop: StopOnInterrupt) -> None:
    """One REPL line: a command or the next user turn (streamed)."""
    command, _, argument = line.partition(" ")
    if command == "/reset":
        session.history = []
        out.write("(new conversation)\n")
    elif command == "/system":
        session.system = argument.strip() or None
        out.write(f"(system prompt {'set' if session.system else 'removed'})\n")
    elif command.startswith("/"):
        out.write(f"unknown command {command}; {COMMANDS}\n")
    else:
        with stop.armed():
            session.ask(line, streamer=_streamer(session.tokenizer, out), stop=stop)
        if stop.requested:
            out.write("(stopped)\n")


def _answer_lines(session: ChatSession, lines: TextIO) -> None:
    """One-shot over stdin: each non-empty line answered in a fresh conversation."""
    for line in lines:
        if line.strip():
            session.history = []
            print(session.ask(line.rstrip("\n")), flush=True)


def _terminal_reader() -> Callable[[str], str]:
    import readline  # noqa: F401  (line editing and history for input())

    return input


def _stream_reader(stream: TextIO, out: TextIO) -> Callable[[str], str]:
    """`input()` for a non-terminal stream: echoes the prompt, raises EOFError at the end."""
    def read(prompt: str) -> str:
        out.write(prompt)
        out.flush()
        line = stream.readline()
        if not line:
            raise EOFError
        return line.rstrip("\n")

    return read


def _streamer(tokenizer: Any, out: TextIO) -> Any:
    """A TextStreamer that writes the reply to `out` instead of stdout."""
    from transformers import TextStreamer

    class OutStreamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
            out.write(text + ("\n" if stream_end else ""))
            out.flush()

    return OutStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


def _note(text: str) -> None:
    print(f"note: {text}", file=sys.stderr)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
