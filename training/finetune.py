"""Fine-tune a Hugging Face encoder for binary sentiment with Ray Train, then export the best checkpoint.

    python -m training.finetune --config training/configs/default.yaml [key=value ...]

Overrides use dotted keys, e.g. `num_workers=4 data.source=/data/sst2 storage_path=s3://bucket/runs`.
Re-running with the same `storage_path` and `run_name` resumes the run from its latest checkpoint.
`--export CHECKPOINT_DIR` skips training and exports that checkpoint with the config's export settings
(e.g. `full_export_rank=1 full_export_bits=4` for a full fine-tune) to `export_dir`.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from pydantic import ValidationError

from training.config import TrainConfig, load_config


def scaling_config(config: TrainConfig):
    from ray.train import ScalingConfig

    resources = {"CPU": config.cpus_per_worker}
    if config.gpus_per_worker:
        resources["GPU"] = config.gpus_per_worker
    if config.neuron_cores_per_worker:
        resources["neuron_cores"] = config.neuron_cores_per_worker
    return ScalingConfig(
        num_workers=config.num_workers, use_gpu=config.gpus_per_worker > 0, resources_per_worker=resources
    )


def build_trainer(config: TrainConfig):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.torch import TorchTrainer

    from training.loop import train_loop_per_worker

    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=config.model_dump(),
        scaling_config=scaling_config(config),
        run_config=RunConfig(
            name=config.run_name,
            storage_path=config.resolved_storage_path(),
            failure_config=FailureConfig(max_failures=config.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=config.keep_checkpoints,
                checkpoint_score_attribute="eval_accuracy",
                checkpoint_score_order="max",
            ),
        ),
    )


def export_checkpoint(config: TrainConfig, checkpoint, out_dir: str) -> dict[str, str]:
    """Rebuild the model from a checkpoint and write `model/` (and `adapter/` for LoRA) under out_dir."""
    import torch

    from training.modeling import TRAIN_STATE_FILE, build_model, load_trainable_state, write_exports

    tokenizer, model = build_model(config)
    with checkpoint.as_directory() as ckpt_dir:
        state = torch.load(Path(ckpt_dir) / TRAIN_STATE_FILE, weights_only=True)  # tensors and plain data only: a checkpoint never runs code
    load_trainable_state(model, state["model"])
    model.eval()
    if "://" not in out_dir:
        return {k: str(v) for k, v in write_exports(config, model, tokenizer, Path(out_dir)).items()}
    import pyarrow.fs

    with tempfile.TemporaryDirectory() as tmp:
        written = write_exports(config, model, tokenizer, Path(tmp))
        pyarrow.fs.copy_files(tmp, out_dir)
    return {k: f"{out_dir.rstrip('/')}/{v.name}" for k, v in written.items()}


def run(config: TrainConfig) -> dict:
    started = time.monotonic()
    trainer = build_trainer(config)
    result = trainer.fit()
    best = result.get_best_checkpoint(metric="eval_accuracy", mode="max") if result.best_checkpoints else None
    if best is None:
        raise RuntimeError(f"run {config.run_name} produced no checkpoint (error: {result.error})")
    best_metrics = next(m for c, m in result.best_checkpoints if c.path == best.path)
    exported = export_checkpoint(config, best, config.resolved_export_dir())
    last = result.metrics or {}
    summary = {
        "run_name": config.run_name,
        "last_step": last.get("step"),
        "resumed_from_step": last.get("resumed_from_step", 0),
        "best_checkpoint": best.path,
        "eval_accuracy": best_metrics.get("eval_accuracy"),
        "step": best_metrics.get("step"),
        "exported": exported,
        "wall_time_s": round(time.monotonic() - started, 1),
    }
    print("[train] done: " + json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m training.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config (see training/configs/)")
    parser.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. num_workers=4")
    parser.add_argument("--export", metavar="CHECKPOINT_DIR", help="export this checkpoint instead of training")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides).with_local_paths_resolved()
    except (ValidationError, ValueError, OSError) as exc:
        print(f"error: invalid training config: {exc}", file=sys.stderr)
        return 2
    if args.export:
        from ray.train import Checkpoint

        from training.modeling import TRAIN_STATE_FILE

        if not (Path(args.export) / TRAIN_STATE_FILE).is_file():
            print(f"error: {args.export} is not a checkpoint of this trainer (no {TRAIN_STATE_FILE})", file=sys.stderr)
            return 2
        written = export_checkpoint(config, Checkpoint.from_directory(args.export), config.resolved_export_dir())
        print("[train] exported: " + json.dumps(written), flush=True)
        return 0
    run(config)
    return 0


if __name__ == "__main__":
    sys.exit(main())
