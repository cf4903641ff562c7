"""The shared base of every training method, and the method registry.

A method is an ``nn.Module`` that owns the encoder and its heads and turns one batch into a loss.
The trainer owns everything else (devices, precision, optimiser, DDP, checkpoints), so a new method
(e.g. an adversarial one) is one small module:

    @dataclass
    class MySettings:                               # given under ``method.options`` in the YAML
        weight: float = bounded(1.0, ge=0)          # checked by validate_config, like every config key

    @register_method("mymethod")
    class MyMethod(Method):
        views = 2                                   # the trainer asks the data factory for two views
        settings_class = MySettings                 # ``self.settings`` is a checked MySettings
        def training_step(self, batch, ctx):
            (x1, x2), y = batch
            ...
            return loss, {"my_stat": 1.0}

Inputs are images (B, C, H, W) or clips (B, C, T, H, W); a method never needs to know which.
In DDP, ``ctx.gather`` all-gathers embeddings *with* gradient and ``ctx.rank`` / ``ctx.world_size``
give this process's row block; the local loss must be the mean over local rows (DDP then averages
the gradients into those of the global mean); a term computed on the whole gathered batch (VICReg's
covariance) is added in full on every rank. Methods that embed log ``embed_std``
(:mod:`vidcsl.methods.collapse`), which the trainer watches for a representation collapse.
docs/methods.md describes every method, its loss and its settings.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from vidcsl.errors import ConfigError
from vidcsl.methods.collapse import EMBED_STD, embedding_std
from vidcsl.methods.settings import NoSettings, read_settings

Tensor = torch.Tensor


def _identity(x: Tensor) -> Tensor:
    return x


@dataclass
class StepContext:
    """What a training step may know about the run. The trainer fills it; tests can use the defaults."""

    epoch: int = 0
    global_step: int = 0
    total_steps: int = 0  # optimiser steps of the whole schedule (0 = unknown), e.g. for BYOL's momentum
    rank: int = 0
    world_size: int = 1
    gather: Callable[[Tensor], Tensor] = field(default=_identity)  # all-gather with gradient, rank order
    gather_nograd: Callable[[Tensor], Tensor] = field(default=_identity)  # e.g. labels, momentum keys


class Method(nn.Module):
    """Encoder + heads + loss. Subclasses set ``views`` and implement :meth:`training_step`."""

    name: ClassVar[str] = "base"
    views: ClassVar[int] = 2  # samples per item the method needs: 1 -> (x, y), 2 -> ((x1, x2), y)
    data_mode: ClassVar[str] = "contrastive"  # augmentations: "contrastive" (SimCLR-style) or "supervised"
    ddp_find_unused: ClassVar[bool] = False  # set if some parameters get no gradient in a step
    settings_class: ClassVar[type] = NoSettings  # dataclass of the method's ``method.options``
    has_negatives: ClassVar[bool] = True  # False: the false-negative options (``fn``) cannot apply
    own_classifier: ClassVar[bool] = False  # True: a trained classifier of its own (evaluated as is, no probe)

    @classmethod
    def views_for(cls, cfg: Any) -> int:
        """Views per sample this method needs under ``cfg`` (the trainer builds the data before the method)."""
        return cls.views

    @classmethod
    def read_settings(cls, cfg: Any) -> Any:
        """``cfg.method.options`` as a checked ``settings_class`` instance (ConfigError naming a bad key)."""
        return read_settings(cls.settings_class, cfg.method.options, cls.name)

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """What only the method can check in a config: its settings, and that ``fn`` can apply to it."""
        cls.read_settings(cfg)
        detector = getattr(getattr(cfg, "fn", None), "detector", "none")
        if not cls.has_negatives and detector != "none":
            raise ConfigError(f"config key 'fn.detector' is {detector!r}, but method {cls.name!r} has no "
                              f"negatives, so no false negatives to remove; set fn.detector=none")

    def __init__(self, cfg: Any, encoder: nn.Module, num_classes: int):
        super().__init__()
        self.cfg = cfg
        self.settings = self.read_settings(cfg)
        self.encoder = encoder
        self.num_classes = num_classes

    def training_step(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        """Return ``(loss, logs)``: a scalar tensor to minimise and plain-float statistics."""
        raise NotImplementedError

    def forward(self, batch: Any, ctx: StepContext) -> tuple[Tensor, dict[str, float]]:
        # DDP only synchronises gradients of work done through ``forward``, so the trainer calls this.
        return self.training_step(batch, ctx)

    def on_train_epoch_start(self, epoch: int) -> None:
        """Hook: called before each epoch (e.g. warm-up switches)."""

    def after_optimizer_step(self) -> None:
        """Hook: called after each optimiser step (e.g. MoCo's momentum update)."""

    def parameters_to_optimize(self) -> Iterator[nn.Parameter]:
        """Parameters the optimiser updates (momentum copies are excluded by ``requires_grad=False``)."""
        return (p for p in self.parameters() if p.requires_grad)

    @torch.no_grad()
    def embed(self, x: Tensor) -> Tensor:
        """Backbone features used by probes and the kNN monitor."""
        return self.encoder(x)

    @staticmethod
    def split_batch(batch: Any) -> tuple[list[Tensor], Tensor | None]:
        """``(x, y)`` or ``((x1, x2, ...), y)`` -> (list of view tensors, labels or None)."""
        x, y = batch if isinstance(batch, (tuple, list)) and len(batch) == 2 else (batch, None)
        views = list(x) if isinstance(x, (tuple, list)) else [x]
        return views, y


METHODS: dict[str, type[Method]] = {}
BUILT_IN = ("simclr", "moco", "supcon", "supervised", "supervised_at", "clae", "rocl", "acl", "byol", "simsiam",
            "vicreg", "barlow")
# Methods whose module is not named after them.
MODULE_OF = {"supervised_at": "adversarial_training"}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator adding a method to :data:`METHODS` under ``name``."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return deco


def method_class(name: str) -> type[Method]:
    """Look a method up by name, importing ``vidcsl.methods.<name>`` on first use."""
    if name not in METHODS:
        try:
            importlib.import_module(f"vidcsl.methods.{MODULE_OF.get(name, name)}")
        except ModuleNotFoundError as err:
            if err.name != f"vidcsl.methods.{MODULE_OF.get(name, name)}":
                raise
    if name not in METHODS:
        known = sorted(set(METHODS) | set(BUILT_IN))
        raise ConfigError(f"config key 'method.name' is {name!r}, not a known method ({', '.join(known)})")
    return METHODS[name]


def build_method(cfg: Any, encoder: nn.Module, num_classes: int) -> Method:
    """The method named by ``cfg.method.name`` around ``encoder`` (``cfg`` is a :class:`vidcsl.config.Config`)."""
    return method_class(cfg.method.name)(cfg, encoder, num_classes)


def projection_head(cfg: Any, in_dim: int) -> nn.Module:
    """The projection head configured in ``cfg.model`` (shared by the contrastive methods)."""
    from vidcsl.models.heads import ProjectionHead

    m = cfg.model
    return ProjectionHead(in_dim, m.proj_hidden_dim, m.proj_out_dim, m.proj_layers, m.proj_batch_norm)


class TwoViewMethod(Method):
    """Encoder + the projection head of ``cfg.model`` over two views: what SimCLR and the methods
    without negatives (BYOL, SimSiam, VICReg, Barlow Twins) share; each adds its loss (and heads)."""

    views = 2

    def __init__(self, cfg: Any, encoder: nn.Module, num_classes: int):
        super().__init__(cfg, encoder, num_classes)
        self.head = projection_head(cfg, encoder.feature_dim)

    def project(self, x: Tensor) -> Tensor:
        """Projection-head output (not normalised; the losses normalise where they need to)."""
        return self.head(self.encoder(x))

    @staticmethod
    def spread_logs(ctx: StepContext, *embeddings: Tensor) -> dict[str, float]:
        """``embed_std`` of the embeddings over the global batch (the collapse guard's measure)."""
        return {EMBED_STD: embedding_std(ctx.gather_nograd(torch.cat(embeddings).detach().contiguous()))}
