"""The per-worker training loop that Ray Train runs on every DDP rank."""

from __future__ import annotations

import math
import os
import random
import tempfile
import time
from pathlib import Path

import torch

from training.config import TrainConfig
from training.data import Example, load_split
from training.modeling import TRAIN_STATE_FILE, build_model, load_trainable_state, parameter_groups, trainable_state


class InjectedFault(RuntimeError):
    """Raised once by the fault-injection test hook."""


def _maybe_inject_fault(config: TrainConfig, step: int, rank: int) -> None:
    fault = config.fault_injection
    if fault is None or step != fault.fail_at_step or rank != fault.rank:
        return
    marker = Path(fault.marker_dir) / f"fault-at-step-{step}"
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text("injected\n")
    raise InjectedFault(f"injected worker failure at step {step} (rank {rank})")


def _batches_for_epoch(n_rows: int, epoch: int, seed: int, rank: int, world: int, batch_size: int) -> list[list[int]]:
    order = list(range(n_rows))
    random.Random(seed * 1000 + epoch).shuffle(order)
    shard = order[rank::world]
    steps = n_rows // (world * batch_size)
    return [shard[i * batch_size : (i + 1) * batch_size] for i in range(steps)]


def _encode(tokenizer, rows: list[Example], max_length: int):
    encoded = tokenizer([r.text for r in rows], padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    encoded["labels"] = torch.tensor([r.label for r in rows])
    return encoded


def _all_reduce_sum(values: list[float]) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(tensor)
    return tensor.tolist()


@torch.no_grad()
def evaluate(model, tokenizer, rows: list[Example], max_length: int, batch_size: int = 64) -> dict[str, float]:
    model.eval()
    ordered = sorted(rows, key=lambda r: len(r.text))  # little padding
    loss_sum = correct = 0.0
    for i in range(0, len(ordered), batch_size):
        batch = _encode(tokenizer, ordered[i : i + batch_size], max_length)
        out = model(**batch)
        loss_sum += float(out.loss) * len(batch["labels"])
        correct += float((out.logits.argmax(-1) == batch["labels"]).sum())
    model.train()
    loss_sum, correct, total = _all_reduce_sum([loss_sum, correct, float(len(rows))])
    return {"eval_loss": loss_sum / max(total, 1), "eval_accuracy": correct / max(total, 1), "eval_rows": total}


def _format_duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m{seconds % 60:02d}s" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def load_train_state(checkpoint, rank: int) -> dict:
    """The training state a checkpoint holds, read from this rank's own copy of it.

    Not `checkpoint.as_directory()`: for a remote (S3) checkpoint all ranks of a node share its download
    directory, and a rank that starts after another finished downloading downloads again into the same
    files while the first reads them (ray-project/ray#48726): a corrupted read on resume.
    """
    with tempfile.TemporaryDirectory(prefix=f"resume-rank{rank}-") as ckpt_dir:
        checkpoint.to_directory(ckpt_dir)
        # Tensors and plain data only: a checkpoint never runs code.
        return torch.load(Path(ckpt_dir) / TRAIN_STATE_FILE, weights_only=True)


def train_loop_per_worker(config_dict: dict) -> None:
    import ray.train
    import ray.train.torch
    from transformers import get_linear_schedule_with_warmup

    config = TrainConfig.model_validate(config_dict)
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    torch.set_num_threads(max(1, int(config.cpus_per_worker)))
    torch.manual_seed(config.seed)

    tokenizer, model = build_model(config)
    train_rows = load_split(config.data, config.data.train_split, config.data.max_train_rows)
    eval_rows = load_split(config.data, config.data.eval_split, config.data.max_eval_rows)[rank::world]

    steps_per_epoch = len(train_rows) // (world * config.batch_size)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_rows)} training rows are fewer than one batch on each of {world} workers")
    total_steps = config.max_steps or steps_per_epoch * config.epochs
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameter_groups(model, config), weight_decay=config.weight_decay)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(config.warmup_ratio * total_steps), total_steps)

    start_step = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint:
        state = load_train_state(checkpoint, rank)
        load_trainable_state(model, state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_step = state["step"]
        if rank == 0:
            print(f"[train] resumed from checkpoint at step {start_step}/{total_steps}", flush=True)

    model = ray.train.torch.prepare_model(model)
    unwrapped = model.module if hasattr(model, "module") else model
    model.train()
    eval_every = config.eval_every_steps or steps_per_epoch
    started = time.monotonic()
    window_loss, window_steps = 0.0, 0
    batches, batches_epoch = [], -1

    for step in range(start_step, total_steps):
        epoch, offset = divmod(step, steps_per_epoch)
        if epoch != batches_epoch:
            batches = _batches_for_epoch(len(train_rows), epoch, config.seed, rank, world, config.batch_size)
            batches_epoch = epoch
        _maybe_inject_fault(config, step + 1, rank)
        batch = _encode(tokenizer, [train_rows[i] for i in batches[offset]], config.max_length)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        window_loss += float(loss.detach())
        window_steps += 1
        done = step + 1
        elapsed = time.monotonic() - started
        rate = (done - start_step) / elapsed
        if rank == 0 and (done % config.log_every_steps == 0 or done == total_steps):
            print(
                f"[train] step {done}/{total_steps} epoch {epoch + 1}/{math.ceil(total_steps / steps_per_epoch)} "
                f"loss {window_loss / window_steps:.4f} lr {scheduler.get_last_lr()[0]:.2e} "
                f"{rate * config.batch_size * world:.0f} texts/s elapsed {_format_duration(elapsed)} "
                f"left {_format_duration((total_steps - done) / rate)}",
                flush=True,
            )
        if done % eval_every == 0 or done % steps_per_epoch == 0 or done == total_steps:
            metrics = evaluate(model, tokenizer, eval_rows, config.max_length)
            metrics.update(
                step=done,
                epoch=done / steps_per_epoch,
                train_loss=window_loss / max(window_steps, 1),
                texts_per_s=rate * config.batch_size * world,
                resumed_from_step=start_step,
            )
            window_loss, window_steps = 0.0, 0
            with tempfile.TemporaryDirectory() as tmp:
                ckpt = None
                if rank == 0:
                    torch.save(
                        {
                            "model": trainable_state(unwrapped),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "step": done,
                            "config": config.model_dump(),
                        },
                        os.path.join(tmp, TRAIN_STATE_FILE),
                    )
                    ckpt = ray.train.Checkpoint.from_directory(tmp)
                    print(
                        f"[train] eval at step {done}: accuracy {metrics['eval_accuracy']:.4f} "
                        f"loss {metrics['eval_loss']:.4f} ({int(metrics['eval_rows'])} rows)",
                        flush=True,
                    )
                ray.train.report(metrics, checkpoint=ckpt)
