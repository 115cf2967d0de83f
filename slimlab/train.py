"""The one training loop: SGD + schedule, per-epoch history, checkpoint/resume hooks, callbacks for masks and fake-quant."""
from __future__ import annotations

import contextlib
import copy
import itertools
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import nn

from slimlab.branches import add_branches, fold_branches
from slimlab.config import TrainConfig
from slimlab.data.loader import DeviceLoader
from slimlab.muon import Muon, scale_invariant_parameters

# Options that keep a second copy of the weights (average, slow weights, teacher): switched off wherever training
# continues from trained weights (retraining after pruning, QAT), so nothing brings back weights a mask removed.
# Extra branches are folded away after the first training, and masks or fake quantization act on the folded kernels.
FRESH_TRAINING_ONLY = {"ema_decay": None, "lookahead_steps": None, "distill_weight": 0.0, "distill_mirrored": False,
                       "branches": "none"}


def peak_rates(cfg: TrainConfig, lr: float) -> dict:
    """Config updates for fine-tuning at peak rate `lr`: the Muon rate scales by the same factor, so a fine-tune
    is as gentle on the convolutions as on everything else."""
    return {"lr": lr, "muon_lr": cfg.muon_lr * lr / cfg.lr}


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the run is marked failed with this message."""


class Callback(Protocol):
    """Optional hooks; a callback implements any subset of them."""

    def on_epoch_start(self, epoch: int, model: nn.Module) -> None: ...
    def on_step_end(self, model: nn.Module) -> None: ...
    def on_epoch_end(self, epoch: int, model: nn.Module, record: dict) -> None: ...


@dataclass
class TrainState:
    """Everything needed to resume: weights, optimizer, next epoch, history so far."""

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


class WeightAverage:
    """Exponential moving average of a model's floating-point weights and buffers, updated every optimizer step.

    The decay ramps up as (1 + t) / (10 + t) so early updates are not dominated by the initial weights; integer
    buffers (batch-norm counters) are copied as they are."""

    def __init__(self, model: nn.Module, decay: float, state: dict | None = None):
        self.decay = decay
        live = model.state_dict()
        source = state["average"] if state else live
        self.average = {k: source[k].detach().clone().to(v.device) for k, v in live.items()}
        self.updates = state["updates"] if state else 0
        self._float_keys = [k for k, v in live.items() if v.dtype.is_floating_point]
        self._live = [live[k] for k in self._float_keys]
        self._shadow = [self.average[k] for k in self._float_keys]
        self._other = [(self.average[k], v) for k, v in live.items() if not v.dtype.is_floating_point]

    @torch.no_grad()
    def update(self) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates))
        torch._foreach_lerp_(self._shadow, self._live, 1 - decay)
        for shadow, live in self._other:
            shadow.copy_(live)

    def state_dict(self) -> dict:
        return {"average": self.average, "updates": self.updates}


class Lookahead:
    """Lookahead (Zhang et al. 2019) over the parameters: every `steps` optimizer steps the slow weights move
    `alpha` of the way to the fast (SGD) weights, and SGD restarts from them. Batch-norm statistics stay live, and so
    do SGD's momentum buffers across each sync."""

    def __init__(self, model: nn.Module, steps: int, alpha: float, state: dict | None = None):
        self.steps, self.alpha = steps, alpha
        self._fast = list(model.parameters())
        source = state["slow"] if state else self._fast
        self.slow = [s.detach().clone().to(p.device) for s, p in zip(source, self._fast)]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Call after optimizer step number `step` (0-based, counted over the whole run so resuming keeps the phase)."""
        if (step + 1) % self.steps == 0:
            self.sync()

    @torch.no_grad()
    def sync(self) -> None:
        torch._foreach_lerp_(self.slow, self._fast, self.alpha)
        torch._foreach_copy_(self._fast, self.slow)

    def state_dict(self) -> dict:
        return {"slow": self.slow}


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


def make_optimizer(model: nn.Module, cfg: TrainConfig, example: torch.Tensor | None = None) -> torch.optim.Optimizer:
    """SGD, or Muon for convolution weights (`example`, a small input batch, tells which are scale-invariant);
    batch-norm weights and biases skip weight decay unless asked (decay on them only hurts small nets)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    nesterov = cfg.nesterov and cfg.momentum > 0
    orthogonal_groups, rest = [], trainable
    if cfg.optimizer == "muon":
        if example is None:
            raise ValueError("the muon optimizer needs an example batch to find the scale-invariant convolution weights")
        invariant = scale_invariant_parameters(model, example)
        convs, rest = [p for p in trainable if p.ndim == 4], [p for p in trainable if p.ndim != 4]
        orthogonal = {"lr": cfg.muon_lr, "momentum": cfg.muon_momentum, "orthogonalize": True}
        orthogonal_groups = [{"params": [p for p in convs if p in invariant], "pin_norm": True, **orthogonal},
                             {"params": [p for p in convs if p not in invariant], "weight_decay": cfg.weight_decay, **orthogonal}]
    decays = [p.ndim > 1 or cfg.decay_norm_and_bias for p in rest]
    groups = [{"params": [p for p, d in zip(rest, decays) if d], "weight_decay": cfg.weight_decay},
              {"params": [p for p, d in zip(rest, decays) if not d], "weight_decay": 0.0}]
    if cfg.optimizer == "muon":
        return Muon([g for g in orthogonal_groups + groups if g["params"]], lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)


def cpu_has_native_bf16() -> bool:
    """oneDNN's own check for AVX512-BF16 or AMX; without them bf16 is emulated and slower than fp32."""
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


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
        correct1 += (top[:, 0] == y).sum().item()
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

    device = train_loader.device
    if cfg.branches != "none":  # before the optimizer, averages and any resumed state: they all see the branches
        add_branches(model, cfg.branches)
    example = next(iter(train_loader))[0][:32] if cfg.optimizer == "muon" else None
    optimizer = make_optimizer(model, cfg, example)
    base_lrs = [g["lr"] for g in optimizer.param_groups]  # before a resumed state overwrites them with scheduled ones
    history: list[dict] = []
    start_epoch = 0
    if resume is not None:
        model.load_state_dict(resume.model)
        optimizer.load_state_dict(resume.optimizer)
        start_epoch, history = resume.epoch, list(resume.history)
    steps_per_epoch = len(train_loader) if cfg.max_batches_per_epoch is None else min(len(train_loader), cfg.max_batches_per_epoch)
    total_steps = steps_per_epoch * cfg.epochs
    criterion = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    precision = training_precision(device, cfg)
    lookahead = None
    if cfg.lookahead_steps is not None:
        lookahead = Lookahead(model, cfg.lookahead_steps, cfg.lookahead_alpha, resume.extra.get("lookahead") if resume is not None else None)
    average = None
    if cfg.ema_decay is not None:
        average = WeightAverage(model, cfg.ema_decay, resume.extra.get("ema") if resume is not None else None)
    teacher = None
    if cfg.distill_weight > 0:  # the weight average, in eval mode, gives soft targets (self-distillation)
        teacher = copy.deepcopy(model).eval().requires_grad_(False)
        teacher_tensors = list(teacher.state_dict().values())
        average_tensors = [average.average[k] for k in teacher.state_dict()]

    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        for cb in callbacks:
            getattr(cb, "on_epoch_start", lambda *a: None)(epoch, model)
        train_loader.set_epoch(epoch, crop=epoch < cfg.epochs - cfg.uncropped_final_epochs)
        started = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        bar = tqdm(total=steps_per_epoch, desc=f"{desc} {epoch + 1}/{cfg.epochs}", leave=False, disable=not bars_on(progress), mininterval=1)
        for b, (x, y) in enumerate(train_loader):
            if b >= steps_per_epoch:
                break
            factor = lr_multiplier(epoch * steps_per_epoch + b, total_steps, steps_per_epoch, cfg)
            for group, base in zip(optimizer.param_groups, base_lrs):
                group["lr"] = base * factor
            with autocast_for(device, precision):
                logits = model(x)
                loss = criterion(logits, y)
                if teacher is not None:
                    torch._foreach_copy_(teacher_tensors, average_tensors)
                    with torch.no_grad():
                        targets = teacher(x.flip(3) if cfg.distill_mirrored else x).float().softmax(1)
                    kl = nn.functional.kl_div(logits.float().log_softmax(1), targets, reduction="batchmean")
                    loss = (1 - cfg.distill_weight) * loss + cfg.distill_weight * kl
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if lookahead is not None:
                lookahead.update(epoch * steps_per_epoch + b)
            for cb in callbacks:
                getattr(cb, "on_step_end", lambda *a: None)(model)
            if average is not None:
                average.update()
            loss_sum += loss.detach() * y.numel()
            correct += (logits.detach().argmax(1) == y).sum()
            seen += y.numel()
            # Checking every step costs nothing on CPU; on CUDA it would sync, so look every 50 steps there.
            if (device.type != "cuda" or b % 50 == 0) and not torch.isfinite(loss_sum):
                bar.close()
                raise TrainingDiverged(f"non-finite training loss at epoch {epoch + 1}, batch {b + 1} (lr {cfg.lr * factor:.4g})")
            bar.update(1)
        bar.close()
        if not torch.isfinite(loss_sum):
            raise TrainingDiverged(f"non-finite training loss in epoch {epoch + 1}")
        record = {"epoch": epoch + 1, "train_loss": loss_sum.item() / max(1, seen), "train_top1": 100.0 * correct.item() / max(1, seen),
                  "lr": cfg.lr * factor, "seconds": time.perf_counter() - started, "precision": precision}
        if val_loader is not None and len(val_loader.labels):
            val = evaluate(model, val_loader, amp=cfg.amp)
            record.update(val_top1=val["top1"], val_loss=val["loss"])
        for cb in callbacks:
            getattr(cb, "on_epoch_end", lambda *a: None)(epoch, model, record)
        history.append(record)
        if progress:
            val_text = f", val {record['val_top1']:.2f}%" if "val_top1" in record else ""
            tqdm.write(f"epoch {epoch + 1}/{cfg.epochs}: loss {record['train_loss']:.4f}, train {record['train_top1']:.2f}%{val_text}, {record['seconds']:.0f}s")
        if save_checkpoint is not None:
            extra = {"ema": average.state_dict()} if average is not None else {}
            if lookahead is not None:
                extra["lookahead"] = lookahead.state_dict()
            save_checkpoint(TrainState(model.state_dict(), optimizer.state_dict(), epoch + 1, history, extra))
    synced_at_end = lookahead is not None and total_steps % cfg.lookahead_steps != 0
    if synced_at_end:  # finish on slow weights, as at every sync
        lookahead.sync()
    if average is not None:  # finish with the averaged weights; the last checkpoint keeps the raw ones beside them
        model.load_state_dict(average.average)
    if cfg.branches != "none":  # back to the original architecture; the folding measures batch-norm inputs on 8 batches
        fold_branches(model, [x for x, _ in itertools.islice(train_loader, 8)])
    # The last epoch's validation saw other weights than those training ends on: validate those too.
    if (average is not None or synced_at_end) and history and val_loader is not None and len(val_loader.labels):
        val = evaluate(model, val_loader, amp=cfg.amp)
        history[-1] = {**history[-1], "final_val_top1": val["top1"], "final_val_loss": val["loss"]}
    return history
