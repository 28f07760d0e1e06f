"""An Ollama Modelfile beside the GGUF file: the trained template in Ollama's Go-template syntax.

`ollama create NAME -f DIR/Modelfile` reads it: FROM the GGUF file next to it, TEMPLATE (the conversation
as the trained template renders it), SYSTEM (the default system prompt training gave rows without one) and
one `PARAMETER stop` per token that ends a reply. Ollama runs Go's text/template over `.Messages`, so the
template's pieces (prefix, the text around each role's content, the assistant header) are written as Go
string constants, and the pieces are checked first: joined as the Go template joins them they must give
exactly what sftkit renders for a few conversations. Named templates of the simple form (no system text
folded into the first user turn) are written; anything else is refused in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sftkit.errors import SftkitError
from sftkit.templates import Template

MODELFILE = "Modelfile"
HEADER = "# Written by `sftkit export`"  # the Modelfile's first line: the marker of a folder sftkit exported


@dataclass(frozen=True)
class Pieces:
    """The literal text around each role's content, as the trained template writes it."""

    prefix: str
    system: tuple[str, str]
    user: tuple[str, str]
    header: str  # what opens an assistant reply (also the generation prompt's end)
    assistant_end: str  # what closes a finished reply

    def render(self, messages: list[dict[str, str]], generation_prompt: bool) -> str:
        """The conversation joined as the Go template joins it (the check against sftkit's rendering)."""
        out = [self.prefix]
        for i, message in enumerate(messages):
            last = i == len(messages) - 1
            if message["role"] == "system":
                out += [self.system[0], message["content"], self.system[1]]
            elif message["role"] == "user":
                out += [self.user[0], message["content"], self.user[1]]
            else:
                out += [self.header, message["content"], "" if last and generation_prompt else self.assistant_end]
        if generation_prompt and messages[-1]["role"] != "assistant":
            out.append(self.header)
        return "".join(out)


def is_ollama_modelfile(path: Path) -> bool:
    """A Modelfile `sftkit export` wrote (its first line is sftkit's header)."""
    try:
        with path.open("rb") as handle:
            return handle.readline(len(HEADER) + 1).decode("utf-8", "replace").startswith(HEADER)
    except OSError:
        return False


def template_problem(template: Any) -> str | None:
    """Why the template cannot be written for Ollama, or None."""
    if not isinstance(template, Template):
        return (
            f"the run's template is a Jinja chat template ({template.name}), which has no Ollama form sftkit "
            "writes; train with a named template (template: NAME), or use --format gguf (llama.cpp reads the "
            "Jinja template in the file)"
        )
    if template.system_in_user:
        return (
            f"the {template.name} template folds the system prompt into the first user turn, which sftkit "
            "does not write for Ollama; use --format gguf"
        )
    try:
        _check(_pieces(template), template)
    except ValueError as exc:
        return str(exc)
    return None


def modelfile(
    template: Template, gguf_name: str, stop_tokens: list[str], default_system: str | None, source: str
) -> str:
    """The Modelfile text.

    Raises:
        SftkitError: the template cannot be written for Ollama, or its pieces do not reproduce it.
    """
    problem = template_problem(template)
    if problem:
        raise SftkitError(f"--format ollama: {problem}")
    pieces = _pieces(template)
    lines = [
        f"{HEADER} from {source} (template {template.name}).",
        f"# ollama create NAME -f {MODELFILE}",
        f"FROM ./{gguf_name}",
        "",
        f'TEMPLATE """{_quoted(go_template(pieces), "TEMPLATE")}"""',
    ]
    if default_system:
        lines.append(f'SYSTEM """{_quoted(default_system, "SYSTEM")}"""')
    lines += [f"PARAMETER stop {json.dumps(token, ensure_ascii=False)}" for token in stop_tokens]
    return "\n".join(lines) + "\n"


def go_template(pieces: Pieces) -> str:
    """Ollama's template over .Messages; every literal is a Go string constant, so layout trimming ({{- -}})
    never touches the template's own whitespace."""
    s = _go_string
    return "".join(
        [
            f"{{{{- {s(pieces.prefix)} }}}}" if pieces.prefix else "",
            "{{- range $i, $m := .Messages }}",
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}",
            f'{{{{- if eq $m.Role "system" }}}}{{{{ {s(pieces.system[0])} }}}}{{{{ $m.Content }}}}{{{{ {s(pieces.system[1])} }}}}',
            f'{{{{- else if eq $m.Role "user" }}}}{{{{ {s(pieces.user[0])} }}}}{{{{ $m.Content }}}}{{{{ {s(pieces.user[1])} }}}}',
            f"{{{{- if $last }}}}{{{{ {s(pieces.header)} }}}}{{{{ end }}}}",
            f'{{{{- else if eq $m.Role "assistant" }}}}{{{{ {s(pieces.header)} }}}}{{{{ $m.Content }}}}',
            f"{{{{- if not $last }}}}{{{{ {s(pieces.assistant_end)} }}}}{{{{ end }}}}",
            "{{- end }}",
            "{{- end }}",
        ]
    )


def _pieces(template: Template) -> Pieces:
    """The pieces, read off a rendering with marker contents (ValueError: the prompt does not start with them)."""
    probe = [{"role": "system", "content": "\x01S"}, {"role": "user", "content": "\x01U"}]
    prompt = template.generation_prompt(probe)
    system, user = template.system.partition("{content}"), template.user.partition("{content}")
    opening = template.prefix + system[0] + "\x01S" + system[2] + user[0] + "\x01U" + user[2]
    if not prompt.startswith(opening):
        raise ValueError(f"the {template.name} template's prompt does not start with its pieces; use --format gguf")
    return Pieces(
        template.prefix,
        (system[0], system[2]),
        (user[0], user[2]),
        prompt[len(opening) :],
        template.assistant.partition("{content}")[2],
    )


def _check(pieces: Pieces, template: Template) -> None:
    """The pieces joined must equal sftkit's rendering, with and without a system prompt, over two turns
    (ValueError when not)."""
    conversations = [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Name a colour."},
        ],
        [
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Again"},
            {"role": "assistant", "content": "Hello again."},
        ],
    ]
    for messages in conversations:
        if template.default_system is not None and messages[0]["role"] != "system":
            messages = [{"role": "system", "content": template.default_system}, *messages]
        ends_with_user = messages[-1]["role"] == "user"
        expected = (
            template.generation_prompt(messages)
            if ends_with_user
            else "".join(text for text, _ in template.render(messages))
        )
        if pieces.render(messages, generation_prompt=ends_with_user) != expected:
            raise ValueError(
                f"the {template.name} template is not a plain sequence of role pieces (it rewrites "
                "earlier turns, e.g. their reasoning), so it has no Ollama form; use --format gguf"
            )


def _go_string(text: str) -> str:
    """A Go interpreted string literal: JSON's escapes (\\n, \\", \\\\, \\uXXXX) are all valid Go escapes."""
    return json.dumps(text, ensure_ascii=False)


def _quoted(text: str, what: str) -> str:
    if '"""' in text:
        raise SftkitError(f'--format ollama: the {what} text contains """, which a Modelfile cannot quote')
    return text
