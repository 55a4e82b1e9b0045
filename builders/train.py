"""Training, knowledge distillation and evaluation on CPU (PyTorch)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 12
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0

    def key(self) -> dict:
        return {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "weight_decay": self.weight_decay,
            "seed": self.seed,
        }


def _batches(x: np.ndarray, y: np.ndarray, batch_size: int, rng: np.random.Generator):
    order = rng.permutation(len(x))
    for start in range(0, len(x), batch_size):
        idx = order[start : start + batch_size]
        yield torch.from_numpy(x[idx]), torch.from_numpy(y[idx])


def _fit(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    log: Callable[[str], None] | None = None,
    tag: str = "train",
) -> nn.Module:
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps = max(1, cfg.epochs * math.ceil(len(x) / cfg.batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    for epoch in range(cfg.epochs):
        model.train()
        total, n = 0.0, 0
        for xb, yb in _batches(x, y, cfg.batch_size, rng):
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(xb), yb, xb)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach()) * len(xb)
            n += len(xb)
        if log:
            log(f"  {tag} epoch {epoch + 1}/{cfg.epochs}: loss {total / max(n, 1):.4f}")
    return model.eval()


def train(model: nn.Module, x: np.ndarray, y: np.ndarray, cfg: TrainConfig, log=None, tag: str = "train") -> nn.Module:
    return _fit(model, x, y, cfg, lambda logits, yb, _xb: F.cross_entropy(logits, yb), log, tag)


def distill(
    student: nn.Module,
    teacher: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    cfg: TrainConfig,
    temperature: float = 4.0,
    alpha: float = 0.7,
    log=None,
) -> nn.Module:
    """Hinton et al.'s knowledge distillation: ``alpha`` × T²·KL(student_T ‖ teacher_T) + (1−alpha) × CE(labels)."""
    teacher.eval()

    def loss_fn(logits: torch.Tensor, yb: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            soft_targets = F.softmax(teacher(xb) / temperature, dim=1)
        kd = F.kl_div(F.log_softmax(logits / temperature, dim=1), soft_targets, reduction="batchmean")
        return alpha * temperature**2 * kd + (1 - alpha) * F.cross_entropy(logits, yb)

    return _fit(student, x, y, cfg, loss_fn, log, "distill")


@torch.no_grad()
def predict_logits(model: nn.Module, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    model.eval()
    return np.concatenate(
        [model(torch.from_numpy(x[i : i + batch_size])).numpy() for i in range(0, len(x), batch_size)]
    )


def top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())
