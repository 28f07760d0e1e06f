"""Optimizers that transformers' `optim` names do not cover, built as LLaMA-Factory builds them.

GaLore and APOLLO are transformers' own optimizers (`galore_adamw`, `apollo_adamw`, ...: see
`sftkit.training.arguments`). Here: LoRA+ (PEFT's create_loraplus_optimizer), BAdam (badam's block
optimizers), Adam-mini (adam_mini) and Muon (torch.optim.Muon on the 2-D hidden weights with AdamW on the
rest, since Muon orthogonalises matrices only). `SftkitTrainer.create_optimizer` asks `build_optimizer`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from sftkit.config import SftConfig


def build_optimizer(cfg: SftConfig, model: torch.nn.Module, args: Any) -> torch.optim.Optimizer | None:
    """The optimizer the config's method asks for, or None for the trainer's own (`optim`)."""
    if cfg.loraplus_lr_ratio is not None:
        return _loraplus(cfg, model, args)
    if cfg.use_badam:
        return _badam(cfg, model, args)
    if cfg.use_adam_mini:
        return _adam_mini(model, args)
    if cfg.use_muon:
        return _muon(model, args)
    return None


def _decay_groups(model: torch.nn.Module, args: Any) -> list[dict[str, Any]]:
    """Trainable parameters split as transformers splits them: weight decay except on norms and biases."""
    from transformers import Trainer

    decay = set(Trainer.get_decay_parameter_names(None, model))
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    return [
        {"params": [p for n, p in named if n in decay], "weight_decay": args.weight_decay},
        {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
    ]


def _loraplus(cfg: SftConfig, model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    from peft.optimizers import create_loraplus_optimizer
    from transformers import Trainer

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    kwargs.pop("lr", None)
    return create_loraplus_optimizer(
        model,
        optimizer_cls,
        lr=args.learning_rate,
        loraplus_lr_ratio=cfg.loraplus_lr_ratio,
        loraplus_lr_embedding=cfg.loraplus_lr_embedding,
        **kwargs,
    )


def _badam(cfg: SftConfig, model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    from badam import BlockOptimizer, BlockOptimizerRatio
    from transformers import Trainer
    from transformers.integrations import is_deepspeed_zero3_enabled

    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    groups = _decay_groups(model, args)
    named = list(model.named_parameters())
    if cfg.badam_mode == "layer":
        return BlockOptimizer(
            base_optimizer=optimizer_cls(groups, **kwargs),
            named_parameters_list=named,
            block_prefix_list=None,
            switch_block_every=cfg.badam_switch_interval,
            start_block=cfg.badam_start_block,
            switch_mode=cfg.badam_switch_mode,
            verbose=cfg.badam_verbose,
            ds_zero3_enabled=is_deepspeed_zero3_enabled(),
        )
    return BlockOptimizerRatio(
        param_groups=groups,
        named_parameters_list=named,
        update_ratio=cfg.badam_update_ratio,
        mask_mode=cfg.badam_mask_mode,
        verbose=cfg.badam_verbose,
        include_embedding=False,
        **kwargs,
    )


def _adam_mini(model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    from adam_mini import Adam_mini
    from transformers.integrations import is_deepspeed_zero3_enabled
    from transformers.modeling_utils import is_fsdp_enabled

    config = model.config
    return Adam_mini(
        named_parameters=model.named_parameters(),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
        model_sharding=is_fsdp_enabled() or is_deepspeed_zero3_enabled(),
        dim=config.hidden_size,
        n_heads=config.num_attention_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None),
        verbose=False,
    )


def _muon(model: torch.nn.Module, args: Any) -> torch.optim.Optimizer:
    """Muon for 2-D weights that are neither embeddings nor the head (LLaMA-Factory's split), AdamW for the rest."""
    embeddings = {
        id(p)
        for module in (model.get_input_embeddings(), model.get_output_embeddings())
        if module is not None
        for p in module.parameters()
    }
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    matrices = [p for n, p in trainable if p.ndim == 2 and id(p) not in embeddings]
    chosen = {id(p) for p in matrices}
    rest = [p for _, p in trainable if id(p) not in chosen]
    muon = torch.optim.Muon(
        matrices, lr=args.learning_rate, weight_decay=args.weight_decay, adjust_lr_fn="match_rms_adamw"
    )
    adamw = torch.optim.AdamW(
        rest,
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        weight_decay=args.weight_decay,
    )
    return MuonWithAdamW(muon, adamw)


class MuonWithAdamW(torch.optim.Optimizer):
    """Two optimizers stepped as one, their parameter groups exposed together (the LR schedule scales all)."""

    def __init__(self, muon: torch.optim.Optimizer, adamw: torch.optim.Optimizer) -> None:
        self.parts = [muon, adamw]
        super().__init__([group for part in self.parts for group in part.param_groups], {})
        # The groups are the parts' own dicts, so a scheduler's lr changes reach the parts.
        self.param_groups = [group for part in self.parts for group in part.param_groups]

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, state in zip(self.parts, state_dict["parts"]):
            part.load_state_dict(state)
