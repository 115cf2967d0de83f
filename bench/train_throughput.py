"""Training throughput of slimlab's loop against a minimal hand-written PyTorch loop, side by side in one run.

    python bench/train_throughput.py [--model resnet20] [--batch-size 128] [--batches 30] [--rounds 3]

Both train the same model on the same CIFAR-10 (JPEG copy) images with the same batch size, optimizer and
memory format; the minimal loop does no augmentation at all, so it is the strictest baseline. Rounds alternate
(A B A B ...) so that drift on a noisy machine hits both; the best and the median round of each are compared. Where the CPU has
native bf16, a third arm times slimlab's loop with `train.cpu_bf16` against the same fp32 baseline. A last arm
runs the extras of examples/resnet20_cifar10.yaml (Muon for the convolutions, reflect padding, alternating flips,
Lookahead, weight average), to show what they cost.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import slimlab  # noqa: E402
from slimlab.data.loader import balanced_subset  # noqa: E402
from slimlab.run import prepare_data  # noqa: E402
from slimlab.train import cpu_has_native_bf16, train  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--model", default="resnet20")
parser.add_argument("--batch-size", type=int, default=128)
parser.add_argument("--batches", type=int, default=30, help="timed batches per round")
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("--threads", type=int, default=torch.get_num_threads())
args = parser.parse_args()
torch.set_num_threads(args.threads)

config = slimlab.load_config(overrides=[f"model.name={args.model}", f"train.batch_size={args.batch_size}", "train.epochs=1",
                                        f"train.max_batches_per_epoch={args.batches + 2}", "train.warmup_epochs=0", "data.val_size=0"])
data = prepare_data(config, progress=False)
n_images = (args.batches + 2) * args.batch_size
subset = balanced_subset(data.train, n_images)  # every class, not the first one stored


def fresh_model():
    torch.manual_seed(0)
    return slimlab.create_model(args.model).to(memory_format=torch.channels_last)


def slimlab_round(train_config, loader_config=config) -> float:
    model = fresh_model()
    loader = data.loader(subset, args.batch_size, loader_config, training=True)

    class Clock:  # starts timing after 2 warm-up steps
        steps = 0

        def on_step_end(self, _):
            Clock.steps += 1
            if Clock.steps == 2:
                Clock.start = time.perf_counter()

    train(model, loader, train_config, callbacks=[Clock()], progress=False)
    return args.batches * args.batch_size / (time.perf_counter() - Clock.start)


def minimal_round() -> float:
    model = fresh_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)
    criterion = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    mean = torch.tensor(data.dataset.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(data.dataset.std).view(1, 3, 1, 1) * 255
    images = ((subset.images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
    labels = subset.labels
    model.train()
    for step in range(args.batches + 2):
        if step == 2:
            start = time.perf_counter()
        x = images[step * args.batch_size:(step + 1) * args.batch_size]
        y = labels[step * args.batch_size:(step + 1) * args.batch_size]
        loss = criterion(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return args.batches * args.batch_size / (time.perf_counter() - start)


arms = {"minimal": minimal_round, "slimlab": lambda: slimlab_round(config.train)}
if data.device.type == "cpu" and cpu_has_native_bf16():  # on CUDA, train.amp already covers bf16
    arms["slimlab_bf16"] = lambda: slimlab_round(config.train.model_copy(update={"cpu_bf16": True}))
recipe = slimlab.load_config(Path(__file__).resolve().parents[1] / "examples/resnet20_cifar10.yaml")
extras = config.model_copy(update={
    "data": config.data.model_copy(update={k: getattr(recipe.data, k) for k in ("crop_padding_mode", "alternate_flips")}),
    "train": config.train.model_copy(update={k: getattr(recipe.train, k) for k in ("optimizer", "muon_lr", "muon_momentum", "lookahead_steps", "lookahead_alpha", "ema_decay")})})
arms["slimlab_recipe_extras"] = lambda: slimlab_round(extras.train, extras)
results = {name: [] for name in arms}
for r in range(args.rounds):
    for name, arm in arms.items():
        results[name].append(arm())
    print(f"round {r + 1}: " + ", ".join(f"{name} {v[-1]:.1f} img/s" for name, v in results.items()), flush=True)
best = {k: max(v) for k, v in results.items()}
median = {k: statistics.median(v) for k, v in results.items()}  # steadier than the best round when rounds swing
print(f"model {args.model}, batch {args.batch_size}, {args.threads} threads, {args.batches} timed batches x {args.rounds} rounds")
print(f"minimal loop : {best['minimal']:.1f} img/s (best round)")
print(f"slimlab loop : {best['slimlab']:.1f} img/s (best round; with crop+flip augmentation)")
print(f"ratio slimlab/minimal: {best['slimlab'] / best['minimal']:.3f} best rounds, "
      f"{median['slimlab'] / median['minimal']:.3f} median rounds  (goal >= 0.95)")
if "slimlab_bf16" in best:
    print(f"slimlab loop, cpu_bf16: {best['slimlab_bf16']:.1f} img/s; ratio to the fp32 minimal loop: "
          f"{best['slimlab_bf16'] / best['minimal']:.3f}")
else:
    print("slimlab loop, cpu_bf16: not timed (this CPU has no native bf16)")
print(f"slimlab loop with the recipe's extras: {best['slimlab_recipe_extras']:.1f} img/s; ratio to the plain slimlab loop: "
      f"{best['slimlab_recipe_extras'] / best['slimlab']:.3f} best rounds, "
      f"{median['slimlab_recipe_extras'] / median['slimlab']:.3f} median rounds")
