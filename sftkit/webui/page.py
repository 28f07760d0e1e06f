"""The page itself (Gradio Blocks): Setup, Data, Run, Runs, Chat, Evaluate & Predict and Export tabs.

The form and the YAML editor are two views of one config: a form field rewrites only its own keys in the
editor's YAML (a hand-added key stays), and typing in the editor fills the form. Each field has exactly one
listener, on `.input` (the user's own edits) with a list of outputs: a field with two `.change` listeners, or
a listener whose output fires another, falls into an endless request loop in Gradio when keys arrive faster
than the server answers. The page's last YAML is kept (CONFIG_DIR/last.yaml) and restored on a reload.

Each tab's handlers are small and call the library or start an `sftkit` command; each action shows the
terminal command that does the same and where it wrote (`said`). The Chat, Evaluate & Predict and Export tabs
are in `deploy_tabs`. Element ids (`elem_id`) are the page's contract with its browser test.
"""

from __future__ import annotations

import shlex
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd

from sftkit.atomic import write_text
from sftkit.run_dir import CONFIG_FILE, METRICS_FILE, shell_command
from sftkit.templates import TEMPLATES
from sftkit.webui import form, plots, runs, words
from sftkit.webui.deploy_tabs import chat_tab, eval_tab, export_tab
from sftkit.webui.jobs import Jobs, progress, summary
from sftkit.webui.shown import said, shown_errors

LAST_STATE = "last.yaml"  # the editor's newest YAML, restored on a reload (the page's own file in CONFIG_DIR)
SAVED_DIR = "saved"  # Save arguments writes CONFIG_DIR/saved/NAME.yaml


@dataclass
class PageSettings:
    """Where the page keeps what it writes, and what its form starts with."""

    config_dir: Path  # the YAML files the page runs, the jobs' logs, data statistics
    model: str = ""
    dataset_dir: str = "data"
    output_dir: str = ""  # the first run's folder; empty: a fresh RUNS_ROOT/train_<date-time>
    runs_root: str = "runs"  # where fresh run folders go; the Runs, Chat and Evaluate tabs list it


@dataclass
class Form:
    """The Setup tab's components: the config fields, and the widgets around them."""

    fields: dict[str, Any]
    method: Any
    precision: Any
    rows: dict[str, Any]  # the method's rows of fields: lora, oft, freeze
    template_note: Any
    dataset_note: Any
    problems: Any  # the form's values checked at the field, in the field's words
    labelled: list[tuple[Any, str, str]]  # (component, "label" | "button" | "tab", key): the language switch


def build(settings: PageSettings, jobs: Jobs) -> gr.Blocks:
    """The page."""
    docs = form.docs()
    labelled: list[tuple[Any, str, str]] = []
    with gr.Blocks(title="sftkit") as page:
        with gr.Row():
            gr.Markdown(
                "## sftkit: supervised fine-tuning\nThe page writes one YAML config and runs `sftkit` "
                "commands on it; each action shows the command that does the same in a terminal."
            )
            language = gr.Radio(
                list(words.LANGUAGES),
                value="English",
                label=words.word("language"),
                elem_id="language",
                scale=0,
                min_width=200,
            )
        tabs: dict[str, Any] = {}
        with gr.Tabs():
            with gr.Tab(words.word("tab-setup"), id="setup", elem_id="tab-setup") as tabs["tab-setup"]:
                setup = _setup_tab(settings, docs, labelled)
                store = _store_row(labelled)
            with gr.Tab(words.word("tab-data"), id="data", elem_id="tab-data") as tabs["tab-data"]:
                data_widgets = _data_tab(labelled)
            with gr.Tab(words.word("tab-run"), id="run", elem_id="tab-run") as tabs["tab-run"]:
                run_widgets = _run_tab(labelled)
            with gr.Tab(words.word("tab-runs"), id="runs", elem_id="tab-runs") as tabs["tab-runs"]:
                _runs_tab(settings)
            with gr.Tab(words.word("tab-chat"), id="chat", elem_id="tab-chat") as tabs["tab-chat"]:
                chat_base = chat_tab(settings.runs_root, settings.model, labelled)
            with gr.Tab(words.word("tab-eval"), id="eval", elem_id="tab-eval") as tabs["tab-eval"]:
                eval_tab(settings.runs_root, settings.config_dir, jobs, labelled)
            with gr.Tab(words.word("tab-export"), id="export", elem_id="tab-export") as tabs["tab-export"]:
                export_tab(settings.runs_root, jobs)
        labelled += [(tab, "tab", name) for name, tab in tabs.items()]
        setup.labelled = labelled
        _wire_config(page, settings, jobs, setup, store, data_widgets, run_widgets, chat_base)
        _wire_language(language, setup)
    return page


# ---------------------------------------------------------------------------- setup


def _setup_tab(settings: PageSettings, docs: dict[str, str], labelled: list[tuple[Any, str, str]]) -> Form:
    defaults = form.defaults()

    def labelled_as(component: Any, key: str) -> Any:
        labelled.append((component, "label", key))
        return component

    def number(key: str, **kwargs: Any) -> gr.Number:
        unset = " (0: unset, the schema's default)" if key in form.UNSET_BY_ZERO else ""
        return labelled_as(
            gr.Number(value=defaults[key], label=words.label(key), info=docs[key] + unset, elem_id=key, **kwargs), key
        )

    def text(key: str, value: Any) -> gr.Textbox:
        return labelled_as(gr.Textbox(value=value, label=words.label(key), info=docs[key], elem_id=key), key)

    fields: dict[str, Any] = {}
    presets = form.presets()
    preset = gr.Dropdown(
        ["", *presets],
        value="",
        label=words.word("preset"),
        elem_id="preset",
        info="fills the model path with a real model's file: "
        + "; ".join(f"{name}: {path}" for name, (path, _t) in presets.items()),
    )
    labelled.append((preset, "label", "preset"))
    with gr.Row():
        fields["model_name_or_path"] = text("model_name_or_path", settings.model)
        fields["template"] = labelled_as(
            gr.Dropdown(
                [form.OWN_TEMPLATE, *TEMPLATES],
                value=form.OWN_TEMPLATE,
                label=words.label("template"),
                info=docs["template"],
                elem_id="template",
            ),
            "template",
        )
    template_note = gr.Markdown(elem_id="template-note")
    with gr.Row():
        method = labelled_as(
            gr.Radio(
                list(form.METHODS),
                value="lora",
                label=words.label("method"),
                elem_id="method",
                info="lora: adapters (PEFT); qlora: LoRA on a 4-bit base (quantization_bit: 4, "
                "a GPU); oft: orthogonal adapters (PEFT); freeze: the last layers train; "
                "full: every weight.",
            ),
            "method",
        )
        precision = labelled_as(
            gr.Radio(
                list(form.PRECISIONS),
                value="bf16" if defaults.get("bf16") else "fp32",
                label=words.label("precision"),
                elem_id="precision",
                info=docs["bf16"],
            ),
            "precision",
        )
    rows: dict[str, Any] = {}
    with gr.Row(visible=True) as rows["lora"]:
        for key in form.LORA_KEYS:
            fields[key] = text(key, defaults[key]) if key in form.LIST_KEYS else number(key)
    with gr.Row(visible=False) as rows["oft"]:
        for key in form.OFT_KEYS:
            fields[key] = text(key, defaults[key]) if key in form.LIST_KEYS else number(key, precision=0)
    with gr.Row(visible=False) as rows["freeze"]:
        fields["freeze_trainable_layers"] = number("freeze_trainable_layers", precision=0)
    with gr.Row():
        fields["dataset_dir"] = text("dataset_dir", settings.dataset_dir)
        fields["dataset"] = labelled_as(
            gr.CheckboxGroup([], label=words.label("dataset"), info=docs["dataset"], elem_id="dataset"), "dataset"
        )
    dataset_note = gr.Markdown(elem_id="dataset-note")
    with gr.Row():
        for key in ("cutoff_len", "val_size"):
            fields[key] = number(key)
        fields["packing"] = labelled_as(
            gr.Checkbox(
                value=defaults["packing"], label=words.label("packing"), info=docs["packing"], elem_id="packing"
            ),
            "packing",
        )
    for row in (form.TRAIN_KEYS[:4], form.TRAIN_KEYS[4:8], form.TRAIN_KEYS[8:-1]):  # 4 a row: no label cut off
        with gr.Row():
            for key in row:
                fields[key] = (
                    labelled_as(
                        gr.Dropdown(
                            _choices(key), value=defaults[key], label=words.label(key), info=docs[key], elem_id=key
                        ),
                        key,
                    )
                    if key in form.CHOICE_KEYS
                    else number(key)
                )
    with gr.Row():
        fields["output_dir"] = labelled_as(
            gr.Textbox(
                value=settings.output_dir,
                label=words.label("output_dir"),
                elem_id="output_dir",
                info=docs["output_dir"]
                + " Each Start gets a fresh folder (runs/train_<date-time>) unless you name one.",
            ),
            "output_dir",
        )
    problems = gr.Markdown(elem_id="setup-problems")
    fields["preset"] = preset  # not a config key: handled apart (see _wire_config)
    return Form(fields, method, precision, rows, template_note, dataset_note, problems, [])


def _store_row(labelled: list[tuple[Any, str, str]]) -> dict[str, Any]:
    """Load a YAML (or a past run's config) into the form; save the arguments under a name."""
    widgets: dict[str, Any] = {}
    with gr.Row():
        widgets["load_path"] = gr.Textbox(
            label="YAML file or run folder to load (a run: its sftkit_config.yaml)", elem_id="load-path", scale=3
        )
        widgets["load"] = gr.Button(words.word("load-button"), elem_id="load-button")
        widgets["save_name"] = gr.Textbox(label="name to save the arguments as", elem_id="save-name")
        widgets["save"] = gr.Button(words.word("save-button"), elem_id="save-button")
    widgets["said"] = gr.Markdown(elem_id="setup-command")
    labelled += [(widgets["load"], "button", "load-button"), (widgets["save"], "button", "save-button")]
    return widgets


def _datasets(folder: str, chosen: list[str] | None = None) -> tuple[Any, str]:
    """The dataset checkboxes of `folder`'s registry, with row counts (those chosen that it has stay ticked)."""
    choices, note = form.dataset_choices(folder)
    names = {name for _label, name in choices}
    return gr.update(choices=choices, value=[name for name in chosen or [] if name in names]), note


def _choices(key: str) -> list[str]:
    from typing import get_args

    from sftkit.config import SftConfig

    return list(get_args(SftConfig.model_fields[key].annotation))


def _wire_language(language: Any, setup: Form) -> None:
    """One listener: every label, tab and button in the chosen language."""
    components = [component for component, _kind, _key in setup.labelled]

    def switched(choice: str) -> list[Any]:
        lang = words.LANGUAGES.get(choice, "en")
        updates = []
        for _component, kind, key in setup.labelled:
            if kind == "button":
                updates.append(gr.update(value=words.word(key, lang)))
            elif kind == "tab":
                updates.append(gr.update(label=words.word(key, lang)))
            else:
                updates.append(gr.update(label=words.word(key, lang) if key in words.WORDS else words.label(key, lang)))
        return updates

    language.input(switched, language, components)


# ---------------------------------------------------------------------------- data


def _data_tab(labelled: list[tuple[Any, str, str]]) -> dict[str, Any]:
    widgets: dict[str, Any] = {}
    with gr.Row():
        widgets["n"] = gr.Number(value=3, precision=0, label="examples", elem_id="preview-n")
        widgets["preview"] = gr.Button(words.word("preview-button"), elem_id="preview-button")
        widgets["stats"] = gr.Button(words.word("stats-button"), elem_id="stats-button")
    labelled += [(widgets["preview"], "button", "preview-button"), (widgets["stats"], "button", "stats-button")]
    widgets["said"] = gr.Markdown(elem_id="data-command")
    widgets["text"] = gr.HighlightedText(
        label="examples as they train (highlighted: trained, the loss is taken on it)",
        color_map={"trained": "green"},
        show_legend=True,
        combine_adjacent=True,
        elem_id="preview",
    )
    widgets["summary"] = gr.Textbox(label="statistics", lines=8, elem_id="stats-summary")
    widgets["plots"] = gr.Gallery(
        label="data stats plots", columns=3, height=420, object_fit="contain", elem_id="stats-plots"
    )
    return widgets


def _preview(cfg: Any, n: int) -> tuple[list[tuple[str, str | None]], str]:
    from sftkit.data.inspect import decoded_runs, prepare_for_cli
    from sftkit.data.masking import IGNORE_INDEX
    from sftkit.data.tokenizer import template_origin

    tokenizer, template, data = prepare_for_cli(cfg)
    segments: list[tuple[str, str | None]] = [(f"{template_origin(template)}\n", None)]
    for row in data.train.select(range(min(max(n, 1), len(data.train)))):
        trained = sum(label != IGNORE_INDEX for label in row["labels"])
        segments.append(
            (f"\n--- {row['dataset']} row {row['index']}: {len(row['input_ids'])} tokens, {trained} trained\n", None)
        )
        segments += [
            (text, "trained" if is_trained else None)
            for text, is_trained in decoded_runs(tokenizer, row["input_ids"], row["labels"])
        ]
    return segments, "\n".join(data.stats.summary_lines())


# ---------------------------------------------------------------------------- run


def _run_tab(labelled: list[tuple[Any, str, str]]) -> dict[str, Any]:
    widgets: dict[str, Any] = {}
    widgets["path"] = gr.Markdown(elem_id="config-path")
    widgets["yaml"] = gr.Textbox(
        label="the YAML this page runs (the form writes its keys here; edit it freely: the form follows)",
        lines=24,
        max_lines=60,
        elem_id="yaml",
    )
    widgets["problems"] = gr.Textbox(
        label="validation (the lines `sftkit train` would print)", lines=3, elem_id="problems"
    )
    widgets["devices"] = _devices_row()
    with gr.Row():
        widgets["overwrite"] = gr.Checkbox(
            False, label="--overwrite (replace an earlier run in output_dir)", elem_id="overwrite"
        )
        for name in ("validate", "start", "stop", "resume"):
            widgets[name] = gr.Button(
                words.word(f"{name}-button"),
                elem_id=f"{name}-button",
                variant={"start": "primary", "stop": "stop"}.get(name, "secondary"),
            )
            labelled.append((widgets[name], "button", f"{name}-button"))
    widgets["said"] = gr.Markdown(elem_id="run-command")
    widgets["state"] = gr.Markdown(elem_id="run-state")
    widgets["plot"] = gr.Plot(label="loss and learning rate", elem_id="loss-plot")
    widgets["drawn"] = gr.Markdown(elem_id="loss-drawn")
    widgets["log"] = gr.Textbox(label="the process's log (newest lines)", lines=12, max_lines=12, elem_id="log")
    widgets["seen"] = gr.State(None)  # what the plot last drew: it is drawn again only when a point arrives
    widgets["timer"] = gr.Timer(1.0, active=False)  # ticks only while a job of the page runs: an idle page is quiet
    return widgets


def _devices_row() -> dict[str, Any]:
    """GPU count (a torchrun launch) and DeepSpeed stage, shown only on a machine with GPUs."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    widgets: dict[str, Any] = {"gpus": gpus}
    with gr.Row(visible=gpus > 0):
        widgets["count"] = gr.Dropdown(
            [str(n) for n in range(1, max(gpus, 1) + 1)],
            value=str(max(gpus, 1)),
            label=f"GPUs to train on (of {gpus}; more than 1: torchrun)",
            elem_id="device-count",
        )
        widgets["deepspeed"] = gr.Dropdown(
            ["none", "2", "3"], value="none", label="DeepSpeed ZeRO stage", elem_id="deepspeed-stage"
        )
    return widgets


def _wire_config(
    page: gr.Blocks,
    settings: PageSettings,
    jobs: Jobs,
    setup: Form,
    store: dict[str, Any],
    data: dict[str, Any],
    run: dict[str, Any],
    chat_base: Any,
) -> None:
    fields = {key: component for key, component in setup.fields.items() if key != "preset"}
    keys = list(fields)
    inputs = [run["yaml"], setup.method, setup.precision, *fields.values()]
    editor = [run["yaml"], run["path"], run["problems"], setup.problems]
    shown_form = [
        setup.method,
        setup.precision,
        *fields.values(),
        *setup.rows.values(),
        setup.dataset_note,
        setup.template_note,
    ]
    last = settings.config_dir / LAST_STATE

    def checked(text: str) -> tuple[str, str, str]:
        """The config file's line, the CLI's validation lines, and the form's problems in the fields' words."""
        path = form.config_path(text, settings.config_dir)
        _, problems = form.check(text, path)
        at_fields = [form.field_line(line, path) for line in problems if form.field_line(line, path)]
        return (
            f"config file: `{path}`",
            "\n".join(problems) or "OK: `sftkit train` accepts this config",
            "\n".join(f"- {line}" for line in at_fields),
        )

    def remember(text: str) -> None:
        settings.config_dir.mkdir(parents=True, exist_ok=True)
        write_text(last, text)

    def from_form(text: str, method: str, precision: str, values: list[Any]) -> list[Any]:
        """The editor after a form edit: the form's keys rewritten, the rest of the YAML as it was."""
        by_key = dict(zip(keys, values))
        written = form.merged_yaml(text, form.to_config(by_key, method, precision))
        if written is None:
            path, problems, at_fields = checked(text)
            return [
                gr.update(),
                path,
                problems + "\n(the editor's YAML does not parse: the form's change is not "
                "written into it; fix the YAML first)",
                at_fields,
            ]
        remember(written)
        path, problems, at_fields = checked(written)
        missing = form.field_problems(by_key)
        return [written, path, problems, "\n".join(f"- {line}" for line in missing) or at_fields]

    def form_shows(values: dict[str, Any], method: str, precision: str) -> list[Any]:
        """What the Setup tab shows for these values (the datasets of its dataset_dir, the method's rows)."""
        datasets, note = _datasets(str(values.get("dataset_dir") or ""), values.get("dataset"))
        shown = [datasets if key == "dataset" else gr.update(value=values.get(key)) for key in keys]
        return [
            method,
            precision,
            *shown,
            *_rows(method),
            note,
            form.template_note(values.get("model_name_or_path") or "", values.get("template")),
        ]

    def from_editor(text: str) -> list[Any]:
        """The form after a hand edit of the YAML (the editor itself is not touched)."""
        remember(text)
        path, problems, at_fields = checked(text)
        parsed = form.from_yaml(text)
        updates = form_shows(*parsed) if parsed is not None else [gr.update()] * len(shown_form)
        return [path, problems, at_fields, *updates]

    def one_field(key: str, extra: list[Any], also: Any) -> None:
        """The field's only listener: the editor, plus what else shows this field."""

        def changed(text: str, method: str, precision: str, *values: Any) -> list[Any]:
            by_key = dict(zip(keys, values))
            if key == "dataset_dir" and not by_key["dataset"]:
                # while a folder is typed its partial names list no datasets: the YAML keeps the ticked ones
                by_key["dataset"] = form.datasets_of(text)
            return [*from_form(text, method, precision, list(by_key.values())), *also(by_key, method)]

        # always_last: while a request is out, only the newest keystroke waits (Gradio's default for .input,
        # "once", drops the keys typed meanwhile)
        fields[key].input(changed, inputs, [*editor, *extra], trigger_mode="always_last")

    def nothing(values: dict[str, Any], method: str) -> list[Any]:  # the fields that show nowhere else
        return []

    key_model = "model_name_or_path"
    for key in keys:
        if key == "model_name_or_path":
            one_field(
                key,
                [setup.template_note, chat_base],
                lambda v, m: [form.template_note(v[key_model] or "", v["template"]), v[key_model]],
            )
        elif key == "template":
            one_field(key, [setup.template_note], lambda v, m: [form.template_note(v[key_model] or "", v["template"])])
        elif key == "dataset_dir":
            one_field(
                key,
                [fields["dataset"], setup.dataset_note],
                lambda v, m: list(_datasets(v["dataset_dir"], v["dataset"])),
            )
        else:
            one_field(key, [], nothing)

    def method_changed(text: str, method: str, precision: str, *values: Any) -> list[Any]:
        return [*from_form(text, method, precision, list(values)), *_rows(method)]

    setup.method.input(method_changed, inputs, [*editor, *setup.rows.values()], trigger_mode="always_last")
    setup.precision.input(
        lambda text, m, p, *v: from_form(text, m, p, list(v)), inputs, editor, trigger_mode="always_last"
    )

    def preset_chosen(name: str, text: str, method: str, precision: str, *values: Any) -> list[Any]:
        path, template = form.presets().get(name, ("", None))
        if not path:
            return [gr.update()] * (len(editor) + 4)
        by_key = {**dict(zip(keys, values)), "model_name_or_path": path, "template": template or form.OWN_TEMPLATE}
        return [
            *from_form(text, method, precision, list(by_key.values())),
            path,
            by_key["template"],
            form.template_note(path, by_key["template"]),
            path,
        ]

    setup.fields["preset"].input(
        preset_chosen,
        [setup.fields["preset"], *inputs],
        [*editor, fields["model_name_or_path"], fields["template"], setup.template_note, chat_base],
    )
    run["yaml"].input(
        from_editor,
        run["yaml"],
        [run["path"], run["problems"], setup.problems, *shown_form],
        trigger_mode="always_last",
    )

    def starting_yaml() -> str:
        values = {
            **form.defaults(),
            "model_name_or_path": settings.model,
            "dataset_dir": settings.dataset_dir,
            "output_dir": settings.output_dir or form.fresh_output_dir(settings.runs_root),
        }
        return form.to_yaml(form.to_config(values, "lora", "bf16" if values.get("bf16") else "fp32"))

    def restored() -> list[Any]:
        """A page opened again (a reload, another browser) shows the last YAML and the form it means."""
        text = last.read_text(encoding="utf-8") if last.is_file() else starting_yaml()
        job = jobs.get("train")
        return [text, *from_editor(text), gr.Timer(active=job is not None and job.running())]

    page.load(restored, None, [run["yaml"], run["path"], run["problems"], setup.problems, *shown_form, run["timer"]])

    @shown_errors
    def loaded(path_text: str) -> list[Any]:
        text, note = form.read_for_form(path_text, settings.runs_root)
        remember(text)
        return [text, *from_editor(text), note]

    store["load"].click(
        loaded,
        store["load_path"],
        [run["yaml"], run["path"], run["problems"], setup.problems, *shown_form, store["said"]],
    )

    def saved_as(name: str, text: str) -> str:
        if not form.SAVE_NAME.fullmatch(name or ""):
            raise gr.Error("name: letters, digits, '.', '_' or '-' (e.g. smollm2-lora)")
        path = settings.config_dir / SAVED_DIR / f"{name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        return f"saved: wrote `{path}`; load it back with Load, or run it: {said(shell_command('train', path))}"

    store["save"].click(saved_as, [store["save_name"], run["yaml"]], store["said"])
    _wire_run(settings, jobs, run, data, fields, editor, remember, checked)


def _rows(method: str) -> list[Any]:
    return [
        gr.update(visible=method in ("lora", "qlora")),
        gr.update(visible=method == "oft"),
        gr.update(visible=method == "freeze"),
    ]


def _wire_run(
    settings: PageSettings,
    jobs: Jobs,
    run: dict[str, Any],
    data: dict[str, Any],
    fields: dict[str, Any],
    editor: list[Any],
    remember: Any,
    checked: Any,
) -> None:
    def saved(text: str) -> tuple[Any, Path]:
        """The validated config and the file it was written to (only a valid config is written)."""
        path = form.config_path(text, settings.config_dir)
        cfg, problems = form.check(text, path)
        if cfg is None:
            raise gr.Error("\n".join(problems))
        settings.config_dir.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        return cfg, path

    def launcher(count: str, stage: str) -> tuple[list[str] | None, list[str]]:
        """torchrun for more than one GPU, and the DeepSpeed config of a stage (--set deepspeed=FILE)."""
        extra: list[str] = []
        if stage in ("2", "3"):
            ds = settings.config_dir / f"ds_z{stage}.json"
            write_text(ds, form.deepspeed_json(int(stage)))
            extra = ["--set", f"deepspeed={ds}"]
        if run["devices"]["gpus"] > 1 and int(count) > 1:
            import sys

            return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", count, "-m", "sftkit"], extra
        return None, extra

    @shown_errors
    def train(text: str, overwrite: bool, resume: bool, count: str, stage: str) -> list[Any]:
        job, editor_text = jobs.get("train"), text
        if resume and job is not None and job.config is not None and job.config.is_file():
            text = job.config.read_text(encoding="utf-8")  # Resume continues the page's last run, not the form
        cfg, path = saved(text)
        out = Path(cfg.output_dir)
        if not resume and not overwrite and out.is_dir() and any(out.iterdir()):
            raise gr.Error(
                f"output_dir {out} already holds files: choose a new folder (empty the output_dir field "
                "for a fresh one) or tick --overwrite"
            )
        program, extra = launcher(count, stage)
        args = [
            "train",
            str(path),
            *(["--overwrite"] if overwrite and not resume else []),
            *(["--resume", "latest"] if resume else []),
            *extra,
        ]
        try:
            job = jobs.start("train", *args, program=program)
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None
        job.output_dir, job.config = out, path  # what the Run tab watches, whatever the editor holds next
        # the next Start trains into a folder of its own, shown in the form and the YAML before it starts (a
        # Resume continues a run: the form's next folder stays as it was)
        following = (
            editor_text
            if resume and form.output_dir_of(editor_text) != str(out)
            else form.with_output_dir(editor_text, form.fresh_output_dir(str(out.parent)))
        )
        remember(following)
        return [
            f"{said(job.command)}: writes the run to `{out}` (config `{path}`, log `{job.log}`)",
            following,
            *checked(following),
            form.output_dir_of(following),
            gr.Timer(active=True),
            None,
        ]

    run_outputs = [
        run["said"],
        run["yaml"],
        run["path"],
        run["problems"],
        editor[3],
        fields["output_dir"],
        run["timer"],
        run["seen"],
    ]
    devices = [run["devices"]["count"], run["devices"]["deepspeed"]]
    run["start"].click(
        lambda t, o, c, s: train(t, o, False, c, s),
        [run["yaml"], run["overwrite"], *devices],
        run_outputs,
        api_name="start",
    )
    run["resume"].click(
        lambda t, o, c, s: train(t, o, True, c, s),
        [run["yaml"], run["overwrite"], *devices],
        run_outputs,
        api_name="resume",
    )

    @shown_errors
    def validate(text: str) -> list[Any]:
        _, path = saved(text)
        job = jobs.start("validate", "validate", str(path))
        return [f"{said(job.command)} (wrote `{path}`; log `{job.log}`)", gr.Timer(active=True)]

    run["validate"].click(validate, run["yaml"], [run["said"], run["timer"]], api_name="validate")

    def stop() -> str:
        job = jobs.get("train")
        if job is None or not job.running():
            raise gr.Error("no run of this page is training")
        job.stop(signal.SIGINT)
        return (
            f"stopping: SIGINT sent (as Ctrl-C in a terminal); the run saves a checkpoint in `{job.output_dir}` "
            f"and exits. {said(f'kill -INT {job.process.pid}')}"
        )

    run["stop"].click(stop, None, run["said"], api_name="stop")

    def refresh(seen: Any) -> list[Any]:
        """The page's run (after a reload too: it lives in the server); the plot only when a point arrived."""
        job = jobs.get("train")
        output_dir = job.output_dir if job is not None else None
        records = progress(output_dir) if output_dir is not None else []
        now = (str(output_dir), len(records))
        drawn = plots.curves(records) if now != seen else None
        state = f"**{job.state()}** (`{output_dir}`): {summary(records)}" if job is not None else summary(records)
        shown = jobs.newest("train", "validate")
        busy = any(j is not None and j.running() for j in (job, jobs.get("validate")))
        return [
            state,
            drawn[0] if drawn else gr.update(),
            drawn[1] if drawn else gr.update(),
            shown.log_tail() if shown is not None else "",
            now,
            gr.Timer(active=busy),
        ]

    run["timer"].tick(
        refresh, run["seen"], [run["state"], run["plot"], run["drawn"], run["log"], run["seen"], run["timer"]]
    )

    @shown_errors
    def preview(text: str, n: float) -> tuple[Any, str, str]:
        cfg, path = saved(text)
        segments, stats = _preview(cfg, int(n))
        return segments, stats, f"{said(shell_command('data', 'preview', path, '-n', str(int(n))))} (wrote `{path}`)"

    @shown_errors
    def stats(text: str) -> tuple[list[str], str, str]:
        from sftkit.data.quality.commands import stats as data_stats
        from sftkit.data.quality.report import summary_lines

        cfg, path = saved(text)
        out = settings.config_dir / f"data_stats_{path.stem}"
        written = data_stats(cfg, out, overwrite=True)
        plots_written = sorted(str(p) for p in out.glob("*.png"))
        return (
            plots_written,
            "\n".join([*summary_lines(written), f"(data_stats.json and {len(plots_written)} plots in {out})"]),
            f"{said(shell_command('data', 'stats', path, '--out', out, '--overwrite'))} (wrote `{out}`)",
        )

    data["preview"].click(preview, [run["yaml"], data["n"]], [data["text"], data["summary"], data["said"]])
    data["stats"].click(stats, run["yaml"], [data["plots"], data["summary"], data["said"]])


# ---------------------------------------------------------------------------- runs


def _runs_tab(settings: PageSettings) -> None:
    with gr.Row():
        root = gr.Textbox(value=settings.runs_root, label="output folder holding the runs", elem_id="runs-root")
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(headers=runs.COLUMNS, interactive=False, elem_id="runs-table")
    chosen = gr.Dropdown(
        [], multiselect=True, label="runs to compare (any number; the diff is of the first two)", elem_id="runs-chosen"
    )
    plot = gr.Plot(label="loss of the chosen runs", elem_id="runs-plot")
    drawn = gr.Markdown(elem_id="runs-drawn")
    diff = gr.Code(
        language=None, label="config diff (sftkit_config.yaml, every default filled in)", elem_id="runs-diff"
    )
    command_line = gr.Markdown(elem_id="runs-command")

    def listed(folder: str) -> tuple[Any, ...]:
        rows = runs.table(Path(folder))
        names = [row[0] for row in rows]
        metrics = shlex.quote(str(Path(folder) / (names[0] if names else "RUN") / METRICS_FILE))
        return (
            pd.DataFrame(rows, columns=runs.COLUMNS),
            gr.update(choices=names, value=names[:2]),
            *compared(folder, names[:2])[:3],
            f"each row is what the run wrote, e.g. {said(f'cat {metrics}')}",
        )

    def compared(folder: str, names: list[str] | None) -> tuple[Any, ...]:
        chosen_runs = [Path(folder) / name for name in names or []]
        figure, caption = plots.runs_plot(runs.loss_points(chosen_runs))
        if len(chosen_runs) < 2:
            return figure, caption, "choose two runs to see their config diff", gr.update()
        files = [shlex.quote(str(r / CONFIG_FILE)) for r in chosen_runs[:2]]
        return figure, caption, runs.config_diff(*chosen_runs[:2]), said(f"diff -u {files[0]} {files[1]}")

    refresh.click(listed, root, [table, chosen, plot, drawn, diff, command_line])
    chosen.input(compared, [root, chosen], [plot, drawn, diff, command_line])
