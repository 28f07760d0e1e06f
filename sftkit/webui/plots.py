"""The page's curves, drawn whole each time (matplotlib figures): a series that appears later (the first eval loss
of a run being watched, a third run chosen for comparison) is drawn as soon as it exists. Gradio's LinePlot keeps
the series of its first draw, so it showed neither until a reload.

Each figure comes with a caption naming what it holds (series and points), the text a reader (and the browser
test) can check against the run's own numbers.
"""

from __future__ import annotations

from typing import Any


def _figure(width: float) -> Any:
    from matplotlib.figure import (
        Figure,  # no pyplot: handlers run in threads, and nothing is shown on screen
    )

    return Figure(figsize=(width, 3.2), dpi=90, layout="constrained")


def curves(records: list[dict[str, Any]]) -> tuple[Any, str]:
    """Train and eval loss (left) and the learning rate (right) of one run's records, and the caption."""
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    rates = [(r["step"], r["learning_rate"]) for r in records if r.get("learning_rate") is not None]
    figure = _figure(10)
    loss_axes, lr_axes = figure.subplots(1, 2)
    for name, points, style in (("train loss", train, "-"), ("eval loss", evals, "o--")):
        if points:
            loss_axes.plot(*zip(*points), style, label=name)
    loss_axes.set(title="loss", xlabel="step")
    if train or evals:
        loss_axes.legend()
    if rates:
        lr_axes.plot(*zip(*rates))
    lr_axes.set(title="learning rate", xlabel="step")
    return (
        figure,
        f"drawn: train loss ({len(train)} points), eval loss ({len(evals)} points), "
        f"learning rate ({len(rates)} points)",
    )


def runs_plot(points: list[dict[str, Any]]) -> tuple[Any, str]:
    """The train loss of every chosen run (one line each) and its eval loss (dots), and the caption."""
    figure = _figure(10)
    axes = figure.subplots()
    names = list(dict.fromkeys(p["run"] for p in points))
    for name in names:
        for kind, style in (("train", "-"), ("eval", "o--")):
            series = [(p["step"], p["loss"]) for p in points if p["run"] == name and p["kind"] == kind]
            if series:
                axes.plot(*zip(*series), style, label=f"{name} ({kind})")
    axes.set(title="loss of the chosen runs", xlabel="step")
    if names:
        axes.legend(fontsize="small")
    return figure, f"drawn: {len(names)} runs ({', '.join(names) or 'none'})"
