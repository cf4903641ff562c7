"""Supervised baseline: cross-entropy of a linear classifier on the same backbone, augmentations and schedule.

With the option ``two_views`` it sees the same two augmented views as the contrastive methods (loss
averaged), so the SL-vs-CSL comparison differs only in the objective. See docs/methods.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vidcsl.methods.base import Method, StepContext, register_method
from vidcsl.schema import bounded


@dataclass
class SupervisedSettings:
    """``two_views``: cross-entropy on both augmented views of each sample (default: one view).
    ``label_smoothing``: of the cross-entropy (Szegedy et al. 2016), in [0, 1); 0 = plain cross-entropy."""

    two_views: bool = False
    label_smoothing: float = bounded(0.0, ge=0, lt=1)


@register_method("supervised")
class Supervised(Method):
    views = 1
    data_mode = "supervised"
    settings_class = SupervisedSettings
    own_classifier = True

    @classmethod
    def views_for(cls, cfg: Any) -> int:
        return 2 if cls.read_settings(cfg).two_views else 1

    def __init__(self, cfg: Any, encoder: torch.nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        from vidcsl.models.heads import LinearClassifier

        if num_classes < 2:
            raise ValueError(f"method 'supervised' needs a labelled dataset, got num_classes={num_classes}")
        self.views = 2 if self.settings.two_views else 1
        self.classifier = LinearClassifier(encoder.feature_dim, num_classes)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(x))

    def labelled_inputs(self, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Every view of the batch stacked into one input, each row with its class label."""
        views, y = self.split_batch(batch)
        if y is None:
            raise ValueError(f"method {self.name!r} needs class labels, but the batch has none")
        return torch.cat(views), y.repeat(len(views))

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict[str, float]]:
        x, target = self.labelled_inputs(batch)
        logits = self.logits(x).float()
        loss = F.cross_entropy(logits, target, label_smoothing=self.settings.label_smoothing)
        acc = (logits.argmax(1) == target).float().mean().item()
        return loss, {"train_acc": acc}
