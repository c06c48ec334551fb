"""What the pre-flight report card costs, and how complete it is, per model size.

Not part of the test run (pytest's ``norecursedirs`` excludes ``tests/benchmarks``). Run it::

    python tests/benchmarks/preflight_card.py            # both models, 3 repeats, 2 threads
    python tests/benchmarks/preflight_card.py --quick    # one repeat each

Models, both built here in plain torch (nothing downloaded):

- ``small-cnn``: the reference two-conv CNN on 1x8x8 digits (sklearn ``load_digits``), batch 64;
- ``resnet18``: a ResNet-18-sized CNN (torchvision's layout: 7x7 stem, four stages of two basic
  blocks, 11.2 M parameters) on synthetic 3x32x32 images, 10 classes, batch 64.

Per model and repeat, one ``Trainer.fit`` of one step with ``Preflight()`` at its defaults; printed:
the card's total seconds (the checks' own), how many of its lines ran (not ``skipped``), the work
plan (forward FLOPs per sample, steps and samples of the training checks), and the card's
statuses. Repeats must print the same statuses and figures (the card depends on steps and samples,
never on the clock).

Targets: small CNN card <= 1 s; ResNet-18-sized complete on 2 cores in well under a minute.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import lightning.pytorch as pl
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_tips.preflight import Preflight


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-3)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(16 * 16, 10),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
            if stride != 1 or cin != cout else nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.down(x))


def resnet18(num_classes: int = 10) -> nn.Module:
    layers: list[nn.Module] = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                               nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, num_classes)]
    return nn.Sequential(*layers)


def digits_loader() -> DataLoader:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    xt = torch.tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return DataLoader(TensorDataset(xt, torch.tensor(y)), batch_size=64, shuffle=True)


def images_loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 10, (640,), generator=g)
    x = torch.randn(640, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1).float() / 10
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)


MODELS = {"small-cnn": (small_cnn, digits_loader), "resnet18": (resnet18, images_loader)}


def run(name: str, budget_s: float) -> tuple[float, list, dict]:
    build, loader = MODELS[name]
    pl.seed_everything(0, verbose=False)
    pre = Preflight(budget_s=budget_s)
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=1, limit_val_batches=0,
                         default_root_dir=tempfile.mkdtemp(prefix="preflight-card-"),  # its files: not the repo
                         logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[pre])
    t0 = time.perf_counter()
    trainer.fit(Classifier(build()), train_dataloaders=loader())
    wall = time.perf_counter() - t0
    plan = pre.plan.describe() if getattr(pre, "plan", None) is not None else {}
    return wall, pre.card, plan


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--budget-s", type=float, default=60.0, help="Preflight(budget_s=...), the safety net")
    parser.add_argument("--quick", action="store_true", help="one repeat per model")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    repeats = 1 if args.quick else args.repeats
    import warnings

    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {args.threads} thread(s), budget_s={args.budget_s:g}")
    for name in args.models:
        cards = []
        for r in range(repeats):
            wall, card, plan = run(name, args.budget_s)
            ran = sum(line.status != "skipped" for line in card)
            total = sum(line.seconds for line in card)
            per = ", ".join(f"{line.check} {line.seconds:.2f}s" for line in card)
            print(f"{name:<10} repeat {r}: card {total:6.2f} s ({ran}/{len(card)} checks ran), fit {wall:6.2f} s; "
                  f"plan {plan}")
            print(f"{'':<10}   {per}")
            cards.append([(line.check, line.status, line.detail) for line in card])
        same = all(c == cards[0] for c in cards)
        print(f"{name:<10} statuses: {[s for _, s, _ in cards[0]]}; identical across repeats: {same}")
        for check, status, detail in cards[0]:
            print(f"{'':<10}   {check:<28} {status:<8} {detail}")


if __name__ == "__main__":
    main()
