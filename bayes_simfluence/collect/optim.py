"""Optimiser and learning-rate schedule of a collection, identical for every run.

The learning rate of every optimiser step is a plain array (:func:`learning_rates`), recorded in
the runs' ``meta`` and used by TracIn and influence functions as ``eta_t``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "linear", "cosine")


@dataclass(frozen=True)
class OptimConfig:
    """How every run is trained.

    Attributes:
        optimizer: ``"sgd"`` (TracIn's assumption) or ``"adamw"``.
        lr: peak learning rate.
        schedule: ``"constant"``, ``"linear"`` (decay to 0) or ``"cosine"``, after warm-up.
        warmup_steps: linear warm-up from ``lr / warmup_steps`` to ``lr``.
        momentum: SGD momentum.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        max_grad_norm: clip the gradient norm to this; ``None`` for no clipping.
    """

    optimizer: str = "sgd"
    lr: float = 0.05
    schedule: str = "constant"
    warmup_steps: int = 0
    momentum: float = 0.0
    weight_decay: float = 0.0
    max_grad_norm: float | None = None

    def __post_init__(self) -> None:
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose from {OPTIMIZERS}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose from {SCHEDULES}")
        if not self.lr > 0:
            raise ValueError(f"the learning rate must be positive, got {self.lr}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps}")


def learning_rates(config: OptimConfig, total_steps: int) -> np.ndarray:
    """``[total_steps]`` learning rate applied at optimiser steps ``1 .. total_steps``."""
    steps = np.arange(total_steps, dtype=np.float64)
    warmup = config.warmup_steps
    decay_length = max(total_steps - warmup, 1)
    progress = np.clip((steps - warmup) / decay_length, 0.0, 1.0)
    if config.schedule == "constant":
        factor = np.ones_like(steps)
    elif config.schedule == "linear":
        factor = 1.0 - progress
    else:
        factor = 0.5 * (1.0 + np.cos(np.pi * progress))
    if warmup:
        factor = np.where(steps < warmup, (steps + 1) / warmup, factor)
    return config.lr * factor


def build_optimizer(parameters: list[torch.nn.Parameter], config: OptimConfig, total_steps: int
                    ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """A fresh optimiser (empty state) and its scheduler following :func:`learning_rates`."""
    if config.optimizer == "sgd":
        optimizer = torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                                    weight_decay=config.weight_decay)
    else:
        optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    factors = learning_rates(config, total_steps) / config.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: float(factors[min(step, total_steps - 1)]))
    return optimizer, scheduler
