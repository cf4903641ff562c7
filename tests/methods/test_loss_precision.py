"""The training path reaches the fused loss in the dtype it trains in: no fp32 upcast in SimCLR / MoCo.

The kernels pick their dot precision from the inputs (docs/kernels.md): bf16 activations (autocast)
must arrive as bf16 and run bf16 dots; ``method.loss_precision`` overrides the choice.
"""

from __future__ import annotations

import pytest
import torch

import kernels.info_nce_torch as nce_torch
from vidcsl.config import load_config
from vidcsl.methods.base import StepContext, build_method
from vidcsl.models.registry import build_encoder


@pytest.fixture
def spy(monkeypatch):
    seen = []
    real = nce_torch.nce_forward

    def record(anchors, keys, *args, precision, **kw):
        seen.append((anchors.dtype, keys.dtype, precision))
        return real(anchors, keys, *args, precision=precision, **kw)

    monkeypatch.setattr(nce_torch, "nce_forward", record)
    return seen


def step(name, overrides=(), autocast=False):
    cfg = load_config(None, ["model.proj_hidden_dim=16", "model.proj_out_dim=8", "method.loss_backend=torch",
                             f"method.name={name}", *overrides])
    torch.manual_seed(0)
    method = build_method(cfg, build_encoder("small_cnn", channels=(4, 8, 8, 8)), num_classes=3).train()
    x = torch.rand(2, 6, 3, 16, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss, _ = method.training_step(((x[0], x[1]), torch.tensor([0, 1, 2, 0, 1, 2])), StepContext())
    loss.backward()
    return loss


@pytest.mark.parametrize("autocast,expected", [(True, "bf16"), (False, "ieee")])
def test_simclr_feeds_the_loss_its_training_dtype(spy, autocast, expected):
    """bf16 activations reach the loss as bf16 (an fp32 upcast would make the CPU path pick exact dots);
    the kernel normalises rows in fp32 and runs the dots at the resolved precision."""
    loss = step("simclr", autocast=autocast)
    assert torch.isfinite(loss)
    assert spy and all(p == expected for _, _, p in spy), spy


def test_loss_precision_key_overrides_the_dot_dtype(spy):
    step("simclr", ["method.loss_precision=bf16"])
    assert spy and all(p == "bf16" for _, _, p in spy)


def test_moco_runs_its_queue_in_the_configured_precision(spy):
    step("moco", ["method.loss_precision=tf32", "method.options.queue_size=16"])
    assert spy and all(p == "tf32" for _, _, p in spy)


def test_fp32_inputs_on_cuda_default_to_bf16_dots():
    from kernels.info_nce import resolve_precision

    assert resolve_precision("auto", torch.device("cuda"), torch.float32) == "bf16"
    assert resolve_precision("auto", torch.device("cpu"), torch.float32) == "ieee"
