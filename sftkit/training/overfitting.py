"""Signs of overfitting in a trainer's log history."""

from __future__ import annotations

from typing import Any

# Overfitting signs: an eval-loss rise within this fraction of the best is noise; an eval loss more
# than OVERFIT_GAP above the train loss at the best step means the training rows are memorised.
RISE_TOLERANCE = 0.01
OVERFIT_GAP = 0.10


# ---------------------------------------------------------------------------- overfitting


def overfitting_signs(log_history: list[dict[str, Any]]) -> list[str]:
    """Signs of overfitting in a trainer's `state.log_history`, one line each (empty: none seen).

    Two signs: the eval loss rose after its best while the train loss kept falling, and the eval
    loss at its best step sits more than 10% above the train loss there.
    """
    evals = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    trains = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry]
    if not evals or not trains:
        return []
    best_step, best = min(evals, key=lambda pair: pair[1])
    signs = [_rising_sign(evals, trains, best_step, best), _gap_sign(trains, best_step, best)]
    return [sign for sign in signs if sign]


def _rising_sign(
    evals: list[tuple[int, float]], trains: list[tuple[int, float]], best_step: int, best: float
) -> str | None:
    last_step, last = evals[-1]
    train_at_best, train_at_last = _train_loss_at(trains, best_step), _train_loss_at(trains, last_step)
    if last_step <= best_step or last <= best * (1 + RISE_TOLERANCE) or train_at_last >= train_at_best:
        return None
    return (
        f"eval loss rose from {best:.4f} (step {best_step}) to {last:.4f} (step {last_step}) while train "
        f"loss fell from {train_at_best:.4f} to {train_at_last:.4f}: the model is overfitting; keep the best "
        "checkpoint (load_best_model_at_end or early_stopping_steps), train fewer epochs or add data"
    )


def _gap_sign(trains: list[tuple[int, float]], best_step: int, best: float) -> str | None:
    train = _train_loss_at(trains, best_step)
    if best <= train * (1 + OVERFIT_GAP):
        return None
    gap = f"{100 * (best / train - 1):.0f}% above" if train > 0 else "above"
    return (
        f"at the best step ({best_step}) eval loss {best:.4f} is {gap} train loss {train:.4f}: the model "
        "fits its training rows much better than unseen ones; add data, lower num_train_epochs or "
        "learning_rate, or raise lora_dropout"
    )


def _train_loss_at(trains: list[tuple[int, float]], step: int) -> float:
    """The last train loss logged at or before `step` (the first one logged if none was yet)."""
    before = [loss for logged, loss in trains if logged <= step]
    return before[-1] if before else trains[0][1]
