"""The training stage: everything that changes how the trainer trains, in one package.

`recipe.train` is the stage's one entry point (validate -> data -> model -> trainer -> run -> save).
Modules: `arguments` (our config -> TRL's SFTConfig), `trainer` (SftkitTrainer, build_trainer),
`collator`, `loss` (chunked cross-entropy), `attention` (per-example attention on a CPU), `callbacks`
(generated samples), `distributed`, `report` (what a run prints and writes), `overfitting`, and
`lifecycle/` (resume, atomic checkpoints, signals, disk).
"""

from sftkit.training.recipe import train

__all__ = ["train"]
