"""The one training loop: optimizer + schedule, per-epoch history, checkpoint/resume, and callbacks, through which
the extras (slimlab/extras/), masks and fake quantization act; the optimizer comes from slimlab/optimizers/."""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch
from torch import nn

from slimlab.config import TrainConfig
from slimlab.cpu_features import cpu_has_native_bf16
from slimlab.data.loader import DeviceLoader
from slimlab.extras import ExtraContext, build_extras, extras
from slimlab.optimizers import make_optimizer, optimizers


def fine_tuning_overrides(cfg: TrainConfig) -> dict:
    """Config updates for training that goes on from trained weights a mask or fake quantization constrains
    (retraining after pruning, QAT): every extra and optimizer that declares it must not run then is switched off,
    by its own declaration, so a new one cannot be forgotten here."""
    updates = {key: value for extra in extras().values() if not extra.fine_tuning for key, value in extra.off.items()}
    if not optimizers()[cfg.optimizer].fine_tuning:
        updates["optimizer"] = TrainConfig.model_fields["optimizer"].default
    return updates


def peak_rates(cfg: TrainConfig, lr: float) -> dict:
    """Config updates for fine-tuning at peak rate `lr`: every optimizer's own step sizes (Muon's) scale by the same
    factor, so a fine-tune is as gentle on the convolutions as on everything else."""
    rates = {key for entry in optimizers().values() for key in entry.rates}
    return {"lr": lr, **{key: getattr(cfg, key) * lr / cfg.lr for key in sorted(rates)}}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is marked failed with this message."""


class Callback(Protocol):
    """Optional hooks; a callback implements any subset of them. An extra (or any callback that keeps state) also has
    `state_key` and `state_dict()`, saved in each checkpoint (a callback's `load_state_dict` gets it back on resume),
    and `on_train_end`, which returns True when it changed the weights training ends on."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None: ...
    def on_step_end(self, model: nn.Module) -> None: ...
    def on_epoch_end(self, epoch: int, model: nn.Module, record: dict) -> None: ...
    def on_train_end(self, model: nn.Module) -> bool: ...


@dataclass
class TrainState:
    """Everything needed to resume: weights, optimizer, next epoch, history so far, the extras' states by key."""

    model: dict
    optimizer: dict
    epoch: int
    history: list[dict] = field(default_factory=list)
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"model": self.model, "optimizer": self.optimizer, "epoch": self.epoch, "history": self.history, "extra": self.extra}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        return cls(d["model"], d["optimizer"], d["epoch"], d.get("history", []), d.get("extra", {}))


def lr_multiplier(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Learning-rate factor at optimizer step `step` (0-based): linear warm-up, then the chosen decay."""
    warmup = int(round(cfg.warmup_epochs * steps_per_epoch))
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total_steps - warmup)
    floor = cfg.final_lr_fraction
    if cfg.schedule == "onecycle":  # linear decay to the floor after the warm-up peak
        return floor + (1 - floor) * max(0.0, 1 - progress)
    if cfg.schedule == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if cfg.schedule == "step":
        done = step / max(1, total_steps)
        return cfg.gamma ** sum(done >= m for m in cfg.milestones)
    return 1.0


def training_precision(device: torch.device, cfg: TrainConfig) -> str:
    """What the training steps compute in: bf16 autocast (amp on CUDA, cpu_bf16 on a capable CPU) or fp32."""
    wanted = cfg.amp if device.type == "cuda" else cfg.cpu_bf16 and device.type == "cpu" and cpu_has_native_bf16()
    return "bf16-autocast" if wanted else "fp32"


def autocast_for(device: torch.device, precision: str):
    if precision == "bf16-autocast":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def observers_paused(model: nn.Module):
    """Fake-quantize modules observe in eval mode too: an evaluation during QAT must not move the model's scales."""
    modules = [m for m in model.modules() if isinstance(getattr(m, "observer_enabled", None), torch.Tensor)]
    saved = [m.observer_enabled.clone() for m in modules]
    for m in modules:
        m.observer_enabled.fill_(0)
    try:
        yield
    finally:
        for m, enabled in zip(modules, saved):
            m.observer_enabled.copy_(enabled)


@torch.inference_mode()
def evaluate(model: nn.Module, loader: DeviceLoader, amp: bool = False, max_batches: int | None = None,
             progress: bool = False, desc: str = "eval", flip_tta: bool = False) -> dict:
    """Top-1, top-5 accuracy (%) and mean cross-entropy over a loader; `flip_tta` averages the logits of each image
    and its mirror image (test-time augmentation, reported under its own name)."""
    with observers_paused(model):
        return _evaluate(model, loader, amp, max_batches, progress, desc, flip_tta)


def _evaluate(model: nn.Module, loader: DeviceLoader, amp: bool, max_batches: int | None, progress: bool, desc: str,
              flip_tta: bool) -> dict:
    from tqdm import tqdm

    was_training = model.training
    model.eval()
    correct1 = correct5 = 0
    loss_sum, n = 0.0, 0
    total = len(loader) if max_batches is None else min(len(loader), max_batches)
    for b, (x, y) in enumerate(tqdm(loader, total=total, desc=desc, leave=False, disable=not bars_on(progress))):
        if max_batches is not None and b >= max_batches:
            break
        # Evaluation autocasts on CUDA only: CPU figures stay fp32 whatever precision trained the model.
        with autocast_for(loader.device, "bf16-autocast" if amp and loader.device.type == "cuda" else "fp32"):
            logits = model(x)
            if flip_tta:
                logits = (logits.float() + model(x.flip(3)).float()) / 2
        logits = logits.float()
        loss_sum += nn.functional.cross_entropy(logits, y, reduction="sum").item()
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        # argmax, not topk's first: of equal logits (int8 logits tie) the first class, as any deployment script computes it.
        correct1 += (logits.argmax(dim=1) == y).sum().item()
        correct5 += (top == y[:, None]).any(dim=1).sum().item()
        n += y.numel()
    model.train(was_training)
    if n == 0:
        return {}
    return {"top1": 100.0 * correct1 / n, "top5": 100.0 * correct5 / n, "loss": loss_sum / n, "samples": n}


def bars_on(progress: bool) -> bool:
    """Progress bars only on a terminal: in a log or a pipe their redraws are escape codes; plain lines say enough."""
    return progress and sys.stderr.isatty()


def train(model: nn.Module, train_loader: DeviceLoader, cfg: TrainConfig, *, val_loader: DeviceLoader | None = None,
          resume: TrainState | None = None, save_checkpoint: Callable[[TrainState], None] | None = None,
          callbacks: list = (), progress: bool = True, desc: str = "train") -> list[dict]:
    """Train in place for cfg.epochs; returns the per-epoch history. Raises TrainingDiverged on a non-finite loss."""
    from tqdm import tqdm

    # The example batch is drawn only by an optimizer that asks for it (Muon), before any resumed state is loaded.
    optimizer = make_optimizer(model, cfg, lambda: next(iter(train_loader))[0][:32])
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resumed state overwrites them with scheduled ones
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        start_epoch, history = resume.epoch, list(resume.history)
    steps_per_epoch = len(train_loader) if cfg.max_batches_per_epoch is None else min(len(train_loader), cfg.max_batches_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    acting, observing = build_extras(ExtraContext(model, cfg, resume.extra if resume is not None else {},
                                                  start_epoch * steps_per_epoch, total_steps))
    # Extras that change the weights (Lookahead) step first, then masks and fake quantization, then those that only
    # read the weights (an average), so they see each step's final weights.
    run = _Run(model, train_loader, optimizer, cfg, [*acting, *callbacks, *observing], base_lrs, steps_per_epoch,
               total_steps, nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), training_precision(train_loader.device, cfg))
    stateful = [x for x in run.callbacks if hasattr(x, "state_key")]  # extras, and callbacks that keep state (gradual pruning)
    for callback in (c for c in callbacks if hasattr(c, "load_state_dict") and resume is not None and c.state_key in resume.extra):
        callback.load_state_dict(resume.extra[callback.state_key])
    validating = val_loader is not None and len(val_loader.labels) > 0
    for epoch in range(start_epoch, cfg.epochs):
        record = _train_epoch(run, epoch, progress, desc)
        if validating:
            val = evaluate(model, val_loader, amp=cfg.amp)
            record.update(val_top1=val["top1"], val_loss=val["loss"])
        for hook in _hooks(run.callbacks, "on_epoch_end"):
            hook(epoch, model, record)
        history.append(record)
        if progress:
            val_text = f", val {record['val_top1']:.2f}%" if "val_top1" in record else ""
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}, train {record['train_top1']:.2f}%{val_text}, {record['seconds']:.0f}s")
        if save_checkpoint is not None:
            states = {x.state_key: x.state_dict() for x in stateful}
            save_checkpoint(TrainState(model.state_dict(), optimizer.state_dict(), epoch + 1, history, states))
    changed = [hook(model) for hook in _hooks(run.callbacks, "on_train_end")]  # each runs: a list, not any()
    # The last epoch's validation saw other weights than those training ends on: validate those too.
    if any(changed) and history and validating:
        val = evaluate(model, val_loader, amp=cfg.amp)
        history[-1] = {**history[-1], "final_val_top1": val["top1"], "final_val_loss": val["loss"]}
    return history


@dataclass
class _Run:
    """What every epoch of one training run shares."""

    model: nn.Module
    loader: DeviceLoader
    optimizer: torch.optim.Optimizer
    cfg: TrainConfig
    callbacks: list
    base_lrs: list[float]
    steps_per_epoch: int
    total_steps: int
    criterion: nn.Module
    precision: str


def _hooks(callbacks: list, name: str) -> list[Callable[..., Any]]:
    """The callbacks' methods called `name`, in order; a callback implements any subset of the hooks."""
    return [getattr(cb, name) for cb in callbacks if hasattr(cb, name)]


def _train_epoch(run: _Run, epoch: int, progress: bool, desc: str) -> dict:
    """One pass over the training loader; the epoch's record (loss, accuracy, last lr, seconds, precision)."""
    from tqdm import tqdm

    model, cfg, device = run.model, run.cfg, run.loader.device
    model.train()
    for hook in _hooks(run.callbacks, "on_epoch_start"):
        hook(epoch, model)
    run.loader.set_epoch(epoch, crop=epoch < cfg.epochs - cfg.uncropped_final_epochs)
    step_hooks = _hooks(run.callbacks, "on_step_end")
    started = time.perf_counter()
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    seen = 0
    with tqdm(total=run.steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not bars_on(progress),
              mininterval=1) as bar:
        for b, (x, y) in enumerate(run.loader):
            if b >= run.steps_per_epoch:
                break
            factor = lr_multiplier(epoch * run.steps_per_epoch + b, run.total_steps, run.steps_per_epoch, cfg)
            for group, base in zip(run.optimizer.param_groups, run.base_lrs):
                group["lr"] = base * factor
            with autocast_for(device, run.precision):
                logits = model(x)
                loss = run.criterion(logits, y)
            run.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            run.optimizer.step()
            for hook in step_hooks:
                hook(model)
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            # Checking every step costs nothing on CPU; on CUDA it would sync, so look every 50 steps there.
            if (device.type != "cuda" or b % 50 == 0) and not torch.isfinite(loss_sum):
                raise TrainingDiverged(f"non-finite training loss at epoch {epoch + 1}, batch {b + 1} (lr {cfg.lr * factor:.4g})")
            bar.update(1)
    if not torch.isfinite(loss_sum):
        raise TrainingDiverged(f"non-finite training loss in epoch {epoch + 1}")
    return {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(1, seen), "train_top1": 100.0 * correct.item() / max(1, seen),
            "lr": cfg.lr * factor, "seconds": time.perf_counter() - started, "precision": run.precision}
