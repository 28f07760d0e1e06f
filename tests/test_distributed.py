"""Several processes: the DeepSpeed / FSDP settings reach the trainer, and 2 CPU ranks under torchrun train as one.

`accelerate launch --cpu` starts a single process, so the multi-process run uses torchrun (gloo on CPU).
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from sftkit.config import check_environment, load_config, validate_config
from sftkit.errors import ConfigError, SftkitError
from sftkit.model import Precision
from sftkit.training import train
from sftkit.training.arguments import build_sft_config
from sftkit.training.distributed import check_distributed

REPO = Path(__file__).resolve().parent.parent
DEEPSPEED_DIR = REPO / "configs" / "deepspeed"
FP32 = Precision("float32", "cpu", "fp32 on cpu")
DATASETS = "demo_alpaca,demo_sharegpt,demo_messages"
# Keys whose "auto" transformers' DeepSpeed integration fills from the trainer's arguments or the model
# (HfTrainerDeepSpeedConfig.trainer_config_process / trainer_config_finalize); any other "auto" would
# reach DeepSpeed unfilled and fail at startup.
FILLED_AUTO_KEYS = {
    "train_batch_size",
    "train_micro_batch_size_per_gpu",
    "gradient_accumulation_steps",
    "gradient_clipping",
    "fp16.enabled",
    "bf16.enabled",
    "optimizer.params.lr",
    "optimizer.params.betas",
    "optimizer.params.eps",
    "optimizer.params.weight_decay",
    "zero_optimization.reduce_bucket_size",
    "zero_optimization.stage3_prefetch_bucket_size",
    "zero_optimization.stage3_param_persistence_threshold",
}


def base_config(**overrides: Any) -> dict[str, Any]:
    return {"model_name_or_path": "unused", "dataset": "demo_alpaca", "output_dir": "unused", **overrides}


def write_config(directory: Path, values: dict[str, Any]) -> Path:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(values), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------- DeepSpeed and FSDP settings


@pytest.mark.parametrize(
    "name, stage, offload",
    [("ds_z2_config.json", 2, False), ("ds_z3_config.json", 3, False), ("ds_z3_offload_config.json", 3, True)],
)
def test_shipped_deepspeed_configs_leave_only_fillable_keys_on_auto(name: str, stage: int, offload: bool) -> None:
    config = json.loads((DEEPSPEED_DIR / name).read_text(encoding="utf-8"))
    assert config["zero_optimization"]["stage"] == stage
    assert ("offload_param" in config["zero_optimization"]) == offload
    assert set(_auto_keys(config)) <= FILLED_AUTO_KEYS
    # batch sizes and precision always follow the sftkit config, never a number frozen in the JSON
    assert {"train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "bf16.enabled"} <= set(_auto_keys(config))


def _auto_keys(node: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        if isinstance(value, dict):
            keys += _auto_keys(value, f"{prefix}{key}.")
        elif value == "auto":
            keys.append(f"{prefix}{key}")
    return keys


def test_deepspeed_key_is_validated_and_handed_to_the_trainer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Building TrainingArguments with `deepspeed` set needs the deepspeed package (transformers checks its
    version), which CI lacks: so this checks the keyword arguments handed to TRL's SFTConfig instead."""
    import trl

    path = write_config(tmp_path, base_config(deepspeed=str(DEEPSPEED_DIR / "ds_z2_config.json"), bf16=True))
    cfg = load_config(path)
    handed: dict[str, Any] = {}
    monkeypatch.setattr(trl, "SFTConfig", lambda **kwargs: handed.update(kwargs))
    build_sft_config(cfg, FP32)
    assert handed["deepspeed"] == str(DEEPSPEED_DIR / "ds_z2_config.json")
    assert not handed.get("fsdp")
    assert handed["ddp_find_unused_parameters"] is False and handed["log_level_replica"] == "error"


def test_fsdp_keys_reach_the_trainer_arguments() -> None:
    cfg = load_config(REPO / "configs" / "tiny_fsdp.yaml")
    args = build_sft_config(cfg, FP32)
    assert args.fsdp and args.fsdp_config["transformer_layer_cls_to_wrap"] == ["Ernie4_5DecoderLayer"]
    assert args.fsdp_plugin_args["transformer_cls_names_to_wrap"] == "Ernie4_5DecoderLayer"
    assert args.fsdp_plugin_args["fsdp_version"] == 2 and args.fsdp_plugin_args["reshard_after_forward"] is True


def test_fsdp_config_may_be_a_json_file(tmp_path: Path) -> None:
    fsdp_json = tmp_path / "fsdp.json"
    fsdp_json.write_text(json.dumps({"transformer_layer_cls_to_wrap": "Ernie4_5DecoderLayer"}))
    cfg = validate_config(base_config(output_dir=str(tmp_path), fsdp=True, fsdp_config=str(fsdp_json)))
    check_distributed(cfg)
    assert build_sft_config(cfg, FP32).fsdp_config["transformer_layer_cls_to_wrap"] == ["Ernie4_5DecoderLayer"]


def test_deepspeed_and_fsdp_together_are_refused() -> None:
    with pytest.raises(ConfigError, match="deepspeed and fsdp: choose one"):
        validate_config(base_config(deepspeed="x.json", fsdp=True))


def test_distributed_problems_are_reported_together_naming_the_key(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    cfg = validate_config(base_config(deepspeed=str(tmp_path / "missing.json"), fsdp_config=str(broken)))
    with pytest.raises(ConfigError) as caught:
        check_distributed(cfg)
    problems = caught.value.problems
    assert any(p.startswith(f"deepspeed: {tmp_path / 'missing.json'} not found") for p in problems)
    assert any(p.startswith(f"fsdp_config: {broken} is not valid JSON") for p in problems)
    assert any(p.startswith("fsdp_config: set fsdp: true too") for p in problems)


def test_missing_deepspeed_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *args: None if name == "deepspeed" else find_spec(name, *args)
    )
    cfg = validate_config(base_config(deepspeed=str(DEEPSPEED_DIR / "ds_z2_config.json")))
    with pytest.raises(
        ConfigError,
        match=r"deepspeed: the deepspeed package is not installed; run "
        r"`pip install -e \.\[deepspeed\]`",
    ):
        check_environment(cfg)  # with the other packages a setting needs (validate warns, train stops)


def test_cli_exits_2_naming_a_missing_deepspeed_file(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, base_config(deepspeed="configs/deepspeed/nope.json", output_dir=str(tmp_path / "out"))
    )
    run = subprocess.run(
        [sys.executable, "-m", "sftkit", "train", str(path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith("error: deepspeed: configs/deepspeed/nope.json not found")
    assert "Traceback" not in run.stderr and not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- 2 ranks under torchrun


def tiny_run_config(tiny_model_dir: Path, data_dir: Path, output_dir: Path, accumulation: int) -> dict[str, Any]:
    """4 updates of 2 packed sequences each, evaluated and saved at the end.

    With 2 ranks x 1 sequence per update or 1 rank x 2 accumulated sequences, both runs see the same
    sequences in the same order: TRL packs the whole dataset in every process before accelerate hands
    batch i to rank i % 2, and the seeded sampler draws the same permutation everywhere.
    """
    return {
        "model_name_or_path": str(tiny_model_dir),
        "dataset": DATASETS,
        "dataset_dir": str(data_dir),
        "template": "chatml",
        "max_samples": 8,
        "val_size": 4,
        "cutoff_len": 128,
        "packing": True,
        "per_device_train_batch_size": 1,
        "gradient_accumulation_steps": accumulation,
        "learning_rate": 1e-2,
        "lr_scheduler_type": "constant",
        "max_steps": 4,
        "logging_steps": 1,
        "eval_strategy": "steps",
        "eval_steps": 4,
        "save_steps": 4,
        "report_to": "none",
        "output_dir": str(output_dir),
    }


@pytest.fixture(scope="module")
def two_ranks(tiny_model_dir: Path, bundled_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`torchrun --nproc_per_node 2 -m sftkit train`; each rank's stdout/stderr lands in logs/.../<rank>/."""
    work = tmp_path_factory.mktemp("two-ranks")
    config = write_config(work, tiny_run_config(tiny_model_dir, bundled_data, work / "run", accumulation=1))
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(work / "cache"),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--standalone",
        "--log-dir",
        str(work / "logs"),
        "--redirects",
        "3",
        "-m",
        "sftkit",
        "train",
        str(config),
    ]
    launched = subprocess.run(command, capture_output=True, text=True, cwd=work, env=env, timeout=600)
    assert launched.returncode == 0, launched.stderr[-3000:] + _rank_output(work, 0) + _rank_output(work, 1)
    return work


def _rank_output(work: Path, rank: int, stream: str = "std*") -> str:
    return "".join(path.read_text() for path in sorted(work.glob(f"logs/*/attempt_0/{rank}/{stream}.log")))


@pytest.mark.integration  # torchrun starts two processes
def test_two_ranks_save_one_run_and_report_world_size_2(two_ranks: Path) -> None:
    run = two_ranks / "run"
    assert [p.relative_to(run) for p in run.rglob("metrics.json")] == [Path("metrics.json")]
    adapters = sorted(str(p.relative_to(run)) for p in run.rglob("adapter_model.safetensors"))
    assert adapters == ["adapter_model.safetensors", "checkpoint-4/adapter_model.safetensors"]
    # each rank saves its own RNG state into the checkpoint: both were alive and stepping at update 4
    assert {p.name for p in (run / "checkpoint-4").glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 4 and metrics["eval_loss"] is not None
    assert "1 per device x 1 accumulation x 2 processes" in _rank_output(two_ranks, 0, "stdout")


@pytest.mark.integration  # torchrun starts two processes
def test_other_ranks_print_nothing(two_ranks: Path) -> None:
    assert _rank_output(two_ranks, 1) == ""


@pytest.mark.integration  # torchrun starts two processes
def test_two_ranks_match_one_rank_with_doubled_accumulation(
    two_ranks: Path, tiny_model_dir: Path, bundled_data: Path, tmp_path: Path
) -> None:
    """Same sequences per update (see `tiny_run_config`) and the same loss normalisation: the token count of
    the whole update, across ranks as across accumulation steps. What is left is float32 summation order
    (an all-reduce of two gradients against their sum in one process, 1 vs 2 threads), relative error
    ~1e-7 per operation that 4 Adam updates do not grow past ~1e-6. A real mismatch (other sequences, or
    each rank normalising by its own token count) moves the loss by 1e-2 or more, so rel=1e-4 separates them.
    """
    single = train(validate_config(tiny_run_config(tiny_model_dir, bundled_data, tmp_path / "run", accumulation=2)))
    one, two = _train_losses(single), _train_losses(two_ranks / "run")
    assert len(one) == len(two) == 4
    assert two == pytest.approx(one, rel=1e-4)
    tokens = [
        json.loads((run / "metrics.json").read_text())["tokens_seen"] for run in (tmp_path / "run", two_ranks / "run")
    ]
    assert tokens[0] == tokens[1] > 0  # every rank's tokens counted, once


def _train_losses(run: Path) -> list[float]:
    history = json.loads((run / "trainer_state.json").read_text())["log_history"]
    return [entry["loss"] for entry in history if "loss" in entry]


@pytest.mark.integration  # torchrun starts two processes
def test_sigterm_to_torchrun_stops_both_ranks_at_one_saved_step(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path
) -> None:
    """torchrun forwards SIGTERM to every rank; they agree on the step (the guard's flags are gathered each
    step), save one complete checkpoint together and stop; `--resume latest` under torchrun then finishes."""
    from sftkit.training.lifecycle import checkpoint_step, is_complete_checkpoint, latest_checkpoint

    values = tiny_run_config(tiny_model_dir, bundled_data, tmp_path / "run", accumulation=1)
    values |= {"max_steps": 40, "save_steps": 10, "eval_strategy": "no", "val_size": 0}
    config = write_config(tmp_path, values)
    env = {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(tmp_path / "cache"),
    }

    def torchrun(*extra: str, logs: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--standalone",
            "--log-dir",
            str(tmp_path / logs),
            "--redirects",
            "3",
            "-m",
            "sftkit",
            "train",
            str(config),
            *extra,
        ]

    process = subprocess.Popen(
        torchrun(logs="first"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = tmp_path / "run" / "checkpoint-10"
    deadline = time.monotonic() + 300
    while not is_complete_checkpoint(first) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "the run ended before it could be signalled"
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=300) != 0
    saved = latest_checkpoint(tmp_path / "run")
    assert saved is not None and 10 < checkpoint_step(saved) < 40, saved
    assert {p.name for p in saved.glob("rng_state*")} == {"rng_state_0.pth", "rng_state_1.pth"}  # both ranks
    stopped = "".join(p.read_text() for p in (tmp_path / "first").glob("*/attempt_0/0/stderr.log"))
    assert f"stopped by SIGTERM at step {checkpoint_step(saved)} of 40" in stopped, stopped[-2000:]
    resumed = subprocess.run(
        torchrun("--resume", "latest", logs="second"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["global_step"] == 40


# ---------------------------------------------------------------------------- sftkit train starting torchrun itself


def test_force_torchrun_builds_llamafactorys_torchrun_command(monkeypatch: pytest.MonkeyPatch) -> None:
    from sftkit.training.launch import torchrun_command

    for name in ("LOCAL_RANK", "NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "FORCE_TORCHRUN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert torchrun_command(["c.yaml"]) is None  # one device or none: train in this process
    monkeypatch.setenv("FORCE_TORCHRUN", "1")
    monkeypatch.setenv("NPROC_PER_NODE", "2")
    monkeypatch.setenv("MASTER_PORT", "29511")
    command = torchrun_command(["c.yaml", "lr=1"])
    assert command == [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "1",
        "--node_rank",
        "0",
        "--nproc_per_node",
        "2",
        "--master_addr",
        "127.0.0.1",
        "--master_port",
        "29511",
        "-m",
        "sftkit",
        "train",
        "c.yaml",
        "lr=1",
    ]
    monkeypatch.setenv("LOCAL_RANK", "0")  # a process torchrun started never launches again
    assert torchrun_command(["c.yaml"]) is None
    monkeypatch.delenv("LOCAL_RANK")
    monkeypatch.setenv("NNODES", "2")
    monkeypatch.setenv("NODE_RANK", "2")
    with pytest.raises(SftkitError, match="NODE_RANK=2: must be below NNODES=2"):
        torchrun_command(["c.yaml"])
    monkeypatch.setenv("NODE_RANK", "x")
    with pytest.raises(SftkitError, match="NODE_RANK=x: expected a whole number of at least 0"):
        torchrun_command(["c.yaml"])


def _force_torchrun_env(work: Path, **layout: str) -> dict[str, str]:
    return {
        **os.environ,
        "CUDA_VISIBLE_DEVICES": "",
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "HF_DATASETS_CACHE": str(work / "cache"),
        "FORCE_TORCHRUN": "1",
        **layout,
    }


@pytest.mark.integration  # the command starts torchrun, which starts two processes
def test_force_torchrun_trains_on_two_ranks_with_key_value_overrides(
    tiny_model_dir: Path, bundled_data: Path, tmp_path: Path
) -> None:
    """LLaMA-Factory's `FORCE_TORCHRUN=1 NPROC_PER_NODE=2 llamafactory-cli train X.yaml key=value`, here."""
    values = tiny_run_config(tiny_model_dir, bundled_data, tmp_path / "run", accumulation=1)
    config = write_config(tmp_path, values | {"max_steps": 3, "eval_strategy": "no", "val_size": 0})
    run = subprocess.run(
        [sys.executable, "-m", "sftkit", "train", str(config), "max_steps=2", "save_steps=2"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=_force_torchrun_env(tmp_path, NPROC_PER_NODE="2"),
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "starting torchrun: -m torch.distributed.run --nnodes 1 --node_rank 0 --nproc_per_node 2" in run.stderr
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 2  # the override reached both ranks
    assert {p.name for p in (tmp_path / "run" / "checkpoint-2").glob("rng_state*")} == {
        "rng_state_0.pth",
        "rng_state_1.pth",
    }


@pytest.mark.integration  # two "nodes" on loopback, one process each
def test_two_nodes_on_loopback_train_as_one_run(tiny_model_dir: Path, bundled_data: Path, tmp_path: Path) -> None:
    """NNODES=2, NODE_RANK=0/1, MASTER_ADDR/MASTER_PORT as LLaMA-Factory reads them: each node in its own folder
    (its own disk), the run is saved once, by node 0."""
    from sftkit.training.launch import free_port

    port = str(free_port())
    nodes = []
    for rank in (0, 1):
        work = tmp_path / f"node{rank}"
        work.mkdir()
        values = tiny_run_config(tiny_model_dir, bundled_data, Path("run"), accumulation=1)
        config = write_config(work, values | {"max_steps": 2, "save_steps": 2, "eval_strategy": "no", "val_size": 0})
        env = _force_torchrun_env(
            work, NNODES="2", NODE_RANK=str(rank), NPROC_PER_NODE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=port
        )
        nodes.append(
            subprocess.Popen(
                [sys.executable, "-m", "sftkit", "train", str(config)],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-3000:] for _, err in outputs]
    metrics = json.loads((tmp_path / "node0" / "run" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["global_step"] == 2
    assert not (tmp_path / "node1" / "run" / "metrics.json").exists()
