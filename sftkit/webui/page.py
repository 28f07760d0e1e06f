"""The page itself (Gradio Blocks): six tabs over the form, the jobs, the runs and the chat.

Each tab's handlers are small and call the library or start an `sftkit` command; each action shows the
terminal command that does the same (`said`). The Chat and Export tabs are in `deploy_tabs`. Element ids (`elem_id`) are the page's contract with its
browser test.
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
from sftkit.webui import form, runs
from sftkit.webui.deploy_tabs import chat_tab, export_tab
from sftkit.webui.shown import said, shown_errors
from sftkit.webui.jobs import Jobs, progress, summary


@dataclass
class PageSettings:
    """Where the page keeps what it writes, and what its form starts with."""

    config_dir: Path  # the YAML files the page runs, the jobs' logs, data statistics
    model: str = ""
    dataset_dir: str = "data"
    output_dir: str = "runs/webui"


def build(settings: PageSettings, jobs: Jobs) -> gr.Blocks:
    """The page: Setup, Data, Run, Runs, Chat and Export tabs."""
    docs = form.docs()
    with gr.Blocks(title="sftkit") as page:
        gr.Markdown("## sftkit: supervised fine-tuning\nThe page writes one YAML config and runs `sftkit` "
                    "commands on it; each action shows the command that does the same in a terminal.")
        with gr.Tabs():
            with gr.Tab("Setup", id="setup", elem_id="tab-setup"):
                fields, method, precision, notes = _setup_tab(settings, docs)
            with gr.Tab("Data", id="data", elem_id="tab-data"):
                data_widgets = _data_tab()
            with gr.Tab("Run", id="run", elem_id="tab-run"):
                run_widgets = _run_tab()
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                _runs_tab(settings)
            with gr.Tab("Chat", id="chat", elem_id="tab-chat"):
                chat_tab(settings.output_dir, settings.model, fields)
            with gr.Tab("Export", id="export", elem_id="tab-export"):
                export_tab(settings.output_dir, jobs, fields)
        _wire_config(settings, jobs, fields, method, precision, data_widgets, run_widgets)
        # what the form starts with: the datasets of dataset_dir, the template in use, the YAML it means
        page.load(_datasets, fields["dataset_dir"], [fields["dataset"], notes[1]]).then(
            lambda: _running_config(jobs), None, run_widgets["yaml"])
        page.load(form.template_note, [fields["model_name_or_path"], fields["template"]], notes[0])
    return page


# ---------------------------------------------------------------------------- setup

def _setup_tab(settings: PageSettings, docs: dict[str, str]) -> tuple[dict[str, Any], Any, Any, tuple[Any, Any]]:
    defaults = form.defaults()

    def number(key: str, **kwargs: Any) -> gr.Number:
        unset = " (0: unset, the schema's default)" if key in form.UNSET_BY_ZERO else ""
        return gr.Number(value=defaults[key], label=key, info=docs[key] + unset, elem_id=key, **kwargs)

    fields: dict[str, Any] = {}
    with gr.Row():
        fields["model_name_or_path"] = gr.Textbox(value=settings.model, label="model_name_or_path",
                                                  info=docs["model_name_or_path"], elem_id="model_name_or_path")
        fields["template"] = gr.Dropdown([form.OWN_TEMPLATE, *TEMPLATES], value=form.OWN_TEMPLATE, label="template",
                                         info=docs["template"], elem_id="template")
    template_note = gr.Markdown(elem_id="template-note")
    with gr.Row():
        method = gr.Radio(list(form.METHODS), value="lora", label="method", elem_id="method",
                          info="lora: adapters (PEFT); qlora: LoRA on a 4-bit base (quantization_bit: 4, a GPU); "
                               "freeze: the last layers train; full: every weight. " + docs["finetuning_type"])
        precision = gr.Radio(list(form.PRECISIONS), value="bf16" if defaults.get("bf16") else "fp32",
                             label="precision", elem_id="precision", info=docs["bf16"])
    with gr.Row(visible=True) as lora_row:
        for key in form.LORA_KEYS:
            fields[key] = (gr.Textbox(value=defaults[key], label=key, info=docs[key], elem_id=key)
                           if key == "lora_target" else number(key))
    with gr.Row(visible=False) as freeze_row:
        fields["freeze_trainable_layers"] = number("freeze_trainable_layers", precision=0)
    with gr.Row():
        fields["dataset_dir"] = gr.Textbox(value=settings.dataset_dir, label="dataset_dir", info=docs["dataset_dir"],
                                           elem_id="dataset_dir")
        fields["dataset"] = gr.CheckboxGroup([], label="dataset", info=docs["dataset"], elem_id="dataset")
    dataset_note = gr.Markdown(elem_id="dataset-note")
    with gr.Row():
        for key in ("cutoff_len", "val_size"):
            fields[key] = number(key)
        fields["packing"] = gr.Checkbox(value=defaults["packing"], label="packing", info=docs["packing"],
                                        elem_id="packing")
    for row in (form.TRAIN_KEYS[:6], form.TRAIN_KEYS[6:-1]):
        with gr.Row():
            for key in row:
                fields[key] = (gr.Dropdown(_choices(key), value=defaults[key], label=key, info=docs[key], elem_id=key)
                               if key in form.CHOICE_KEYS else number(key))
    with gr.Row():
        fields["output_dir"] = gr.Textbox(value=settings.output_dir, label="output_dir", info=docs["output_dir"],
                                          elem_id="output_dir")

    method.change(lambda m: (gr.update(visible=m in ("lora", "qlora")), gr.update(visible=m == "freeze")),
                  method, [lora_row, freeze_row])
    for trigger in (fields["model_name_or_path"].change, fields["template"].change):
        trigger(form.template_note, [fields["model_name_or_path"], fields["template"]], template_note)

    fields["dataset_dir"].change(_datasets, fields["dataset_dir"], [fields["dataset"], dataset_note])
    return fields, method, precision, (template_note, dataset_note)


def _running_config(jobs: Jobs) -> Any:
    """A page opened again (a reload, another browser) shows the YAML of the run it started, so Stop and Resume
    act on that run and not on the form's starting values."""
    job = jobs.get("train")
    if job is None or job.config is None or not job.config.is_file():
        return gr.update()
    return job.config.read_text(encoding="utf-8")


def _datasets(folder: str) -> tuple[Any, str]:
    """The dataset checkboxes of `folder`'s registry, with row counts, and where they came from."""
    choices, note = form.dataset_choices(folder)
    return gr.update(choices=choices, value=[]), note


def _choices(key: str) -> list[str]:
    from typing import get_args

    from sftkit.config import SftConfig

    return list(get_args(SftConfig.model_fields[key].annotation))


# ---------------------------------------------------------------------------- data

def _data_tab() -> dict[str, Any]:
    widgets: dict[str, Any] = {}
    with gr.Row():
        widgets["n"] = gr.Number(value=3, precision=0, label="examples", elem_id="preview-n")
        widgets["preview"] = gr.Button("Preview", elem_id="preview-button")
        widgets["stats"] = gr.Button("Statistics and plots", elem_id="stats-button")
    widgets["said"] = gr.Markdown(elem_id="data-command")
    widgets["text"] = gr.HighlightedText(label="examples as they train (highlighted: trained, the loss is taken on it)",
                                         color_map={"trained": "green"}, show_legend=True, combine_adjacent=True,
                                         elem_id="preview")
    widgets["summary"] = gr.Textbox(label="statistics", lines=8, elem_id="stats-summary")
    widgets["plots"] = gr.Gallery(label="data stats plots", columns=3, height=420, object_fit="contain",
                                  elem_id="stats-plots")
    return widgets


def _preview(cfg: Any, n: int) -> tuple[list[tuple[str, str | None]], str]:
    from sftkit.data.inspect import decoded_runs, prepare_for_cli
    from sftkit.data.masking import IGNORE_INDEX
    from sftkit.data.tokenizer import template_origin

    tokenizer, template, data = prepare_for_cli(cfg)
    segments: list[tuple[str, str | None]] = [(f"{template_origin(template)}\n", None)]
    for row in data.train.select(range(min(max(n, 1), len(data.train)))):
        trained = sum(label != IGNORE_INDEX for label in row["labels"])
        segments.append((f"\n--- {row['dataset']} row {row['index']}: {len(row['input_ids'])} tokens, {trained} "
                         "trained\n", None))
        segments += [(text, "trained" if is_trained else None)
                     for text, is_trained in decoded_runs(tokenizer, row["input_ids"], row["labels"])]
    return segments, "\n".join(data.stats.summary_lines())


# ---------------------------------------------------------------------------- run

def _run_tab() -> dict[str, Any]:
    widgets: dict[str, Any] = {}
    widgets["path"] = gr.Markdown(elem_id="config-path")
    widgets["yaml"] = gr.Textbox(label="the YAML this page runs (written from the form; edit it freely)", lines=24,
                                 max_lines=60, elem_id="yaml")
    widgets["problems"] = gr.Textbox(label="validation (the lines `sftkit train` would print)", lines=3,
                                     elem_id="problems")
    with gr.Row():
        widgets["overwrite"] = gr.Checkbox(False, label="--overwrite (replace an earlier run in output_dir)",
                                           elem_id="overwrite")
        widgets["validate"] = gr.Button("Validate", elem_id="validate-button")
        widgets["start"] = gr.Button("Start", variant="primary", elem_id="start-button")
        widgets["stop"] = gr.Button("Stop (save and stop)", variant="stop", elem_id="stop-button")
        widgets["resume"] = gr.Button("Resume", elem_id="resume-button")
    widgets["said"] = gr.Markdown(elem_id="run-command")
    widgets["state"] = gr.Markdown(elem_id="run-state")
    with gr.Row():
        widgets["loss"] = gr.LinePlot(x="step", y="value", color="curve", title="loss", elem_id="loss-plot")
        widgets["lr"] = gr.LinePlot(x="step", y="learning_rate", title="learning rate", elem_id="lr-plot")
    widgets["log"] = gr.Textbox(label="the process's log", lines=12, max_lines=12, autoscroll=True, elem_id="log")
    widgets["timer"] = gr.Timer(1.0)
    return widgets


def _curves(records: list[dict[str, Any]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    loss = [{"step": r["step"], "value": r["loss"], "curve": "train"} for r in records if "loss" in r]
    loss += [{"step": r["step"], "value": r["eval_loss"], "curve": "eval"} for r in records if "eval_loss" in r]
    lr = [{"step": r["step"], "learning_rate": r["learning_rate"]} for r in records
          if r.get("learning_rate") is not None]
    return (pd.DataFrame(loss, columns=["step", "value", "curve"]),
            pd.DataFrame(lr, columns=["step", "learning_rate"]))


def _wire_config(settings: PageSettings, jobs: Jobs, fields: dict[str, Any], method: Any, precision: Any,
                 data: dict[str, Any], run: dict[str, Any]) -> None:
    keys = list(fields)
    inputs = [fields[key] for key in keys]

    def to_yaml(method_value: str, precision_value: str, *values: Any) -> str:
        return form.to_yaml(form.to_config(dict(zip(keys, values)), method_value, precision_value))

    for component in [method, precision, *inputs]:
        component.change(to_yaml, [method, precision, *inputs], run["yaml"])

    def check(text: str) -> tuple[str, str]:
        path = form.config_path(text, settings.config_dir)
        _, problems = form.check(text, path)
        return f"config file: `{path}`", "\n".join(problems) or "OK: `sftkit train` accepts this config"

    run["yaml"].change(check, run["yaml"], [run["path"], run["problems"]])

    def saved(text: str) -> tuple[Any, Path]:
        """The validated config and the file it was written to (only a valid config is written)."""
        path = form.config_path(text, settings.config_dir)
        cfg, problems = form.check(text, path)
        if cfg is None:
            raise gr.Error("\n".join(problems))
        settings.config_dir.mkdir(parents=True, exist_ok=True)
        write_text(path, text)
        return cfg, path

    @shown_errors
    def train(text: str, overwrite: bool, resume: bool) -> str:
        cfg, path = saved(text)
        args = ["train", str(path), *(["--overwrite"] if overwrite and not resume else []),
                *(["--resume", "latest"] if resume else [])]
        try:
            job = jobs.start("train", *args)
        except RuntimeError as exc:
            raise gr.Error(str(exc)) from None
        job.output_dir, job.config = Path(cfg.output_dir), path  # what the Run tab watches, whatever the editor holds
        return said(job.command)

    @shown_errors
    def validate(text: str) -> str:
        _, path = saved(text)
        return said(jobs.start("validate", "validate", str(path)).command)

    def stop() -> str:
        job = jobs.get("train")
        if job is None or not job.running():
            raise gr.Error("no run of this page is training")
        job.stop(signal.SIGINT)
        return f"stopping: SIGINT sent (as Ctrl-C in a terminal); the run saves a checkpoint and exits. " \
               f"{said(f'kill -INT {job.process.pid}')}"

    run["start"].click(lambda t, o: train(t, o, False), [run["yaml"], run["overwrite"]], run["said"])
    run["resume"].click(lambda t, o: train(t, o, True), [run["yaml"], run["overwrite"]], run["said"])
    run["validate"].click(validate, run["yaml"], run["said"])
    run["stop"].click(stop, None, run["said"])

    def refresh(text: str) -> tuple[str, Any, Any, str]:
        """The page's run (after a reload too: it lives in the server), else the run in the editor's output_dir."""
        job = jobs.get("train")
        if job is not None and job.output_dir is not None:
            output_dir: Path | None = job.output_dir
        else:
            cfg, _ = form.check(text, settings.config_dir / "webui.yaml")
            output_dir = Path(cfg.output_dir) if cfg is not None else None
        records = progress(output_dir) if output_dir is not None else []
        loss, lr = _curves(records)
        state = f"**{job.state()}**: {summary(records)}" if job is not None else summary(records)
        shown = jobs.newest("train", "validate")
        return state, loss, lr, shown.log_tail() if shown is not None else ""

    run["timer"].tick(refresh, run["yaml"], [run["state"], run["loss"], run["lr"], run["log"]])

    @shown_errors
    def preview(text: str, n: float) -> tuple[Any, str, str]:
        cfg, path = saved(text)
        segments, stats = _preview(cfg, int(n))
        return segments, stats, said(shell_command("data", "preview", path, "-n", str(int(n))))

    @shown_errors
    def stats(text: str) -> tuple[list[str], str, str]:
        from sftkit.data.quality.commands import stats as data_stats
        from sftkit.data.quality.report import summary_lines

        cfg, path = saved(text)
        out = settings.config_dir / f"data_stats_{path.stem}"
        written = data_stats(cfg, out, overwrite=True)
        plots = sorted(str(p) for p in out.glob("*.png"))
        return (plots, "\n".join([*summary_lines(written), f"(data_stats.json and {len(plots)} plots in {out})"]),
                said(shell_command("data", "stats", path, "--out", out, "--overwrite")))

    data["preview"].click(preview, [run["yaml"], data["n"]], [data["text"], data["summary"], data["said"]])
    data["stats"].click(stats, run["yaml"], [data["plots"], data["summary"], data["said"]])


# ---------------------------------------------------------------------------- runs

def _runs_tab(settings: PageSettings) -> None:
    with gr.Row():
        root = gr.Textbox(value=str(Path(settings.output_dir).parent), label="output folder holding the runs",
                          elem_id="runs-root")
        refresh = gr.Button("Refresh", elem_id="runs-refresh")
    table = gr.Dataframe(headers=runs.COLUMNS, interactive=False, elem_id="runs-table")
    with gr.Row():
        first = gr.Dropdown([], label="run A", elem_id="run-a")
        second = gr.Dropdown([], label="run B", elem_id="run-b")
    diff = gr.Code(language=None, label="config diff (sftkit_config.yaml, every default filled in)",
                   elem_id="runs-diff")
    command_line = gr.Markdown(elem_id="runs-command")
    plot = gr.LinePlot(x="step", y="loss", color="run", title="loss of the chosen runs", elem_id="runs-plot")

    def listed(folder: str) -> tuple[Any, Any, Any, str]:
        rows = runs.table(Path(folder))
        names = [row[0] for row in rows]
        metrics = shlex.quote(str(Path(folder) / (names[0] if names else "RUN") / METRICS_FILE))
        return (pd.DataFrame(rows, columns=runs.COLUMNS), gr.update(choices=names, value=names[0] if names else None),
                gr.update(choices=names, value=names[1] if len(names) > 1 else None),
                f"each row is what the run wrote, e.g. {said(f'cat {metrics}')}")

    def compared(folder: str, a: str | None, b: str | None) -> tuple[str, Any, Any]:
        chosen = [Path(folder) / name for name in (a, b) if name]
        points = pd.DataFrame(runs.loss_points(chosen), columns=["run", "step", "loss", "kind"])
        points = points[points["kind"] == "train"]
        if len(chosen) != 2:
            return "choose two runs", points, gr.update()  # keep the table's command line
        files = [shlex.quote(str(run / CONFIG_FILE)) for run in chosen]
        return runs.config_diff(*chosen), points, said(f"diff -u {files[0]} {files[1]}")

    refresh.click(listed, root, [table, first, second, command_line])
    for dropdown in (first, second):
        dropdown.change(compared, [root, first, second], [diff, plot, command_line])
