"""Methods: losses match the materialised reference, FN options are wired, a few steps reduce the loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import default_collate

from kernels.reference import cross_info_nce_reference, info_nce_reference
from vidcsl.methods.base import StepContext, build_method
from vidcsl.methods.false_negatives import FalseNegativeConfig, fn_logs, fn_loss_kwargs


def batch_of(kit, n=16, two_views=True, seed=0):
    torch.manual_seed(seed)
    ds = kit.NoisyViews(n, two_views=two_views)
    return default_collate([ds[i] for i in range(n)])


MOCO_OPTIONS = {"momentum": 0.9, "queue_size": 32}  # a small queue and a fast key encoder for tiny tests


def make(kit, name, **sections):
    options = MOCO_OPTIONS if name == "moco" else {}
    cfg = kit.cfg(method={"name": name, "options": options}, **sections)
    return build_method(cfg, kit.TinyEncoder(), 4), cfg


def test_simclr_loss_is_reference_nt_xent(kit):
    m, cfg = make(kit, "simclr")
    batch = batch_of(kit)
    loss, logs = m.training_step(batch, StepContext())
    (x1, x2), y = batch
    z1, z2 = m.head(m.encoder(torch.cat([x1, x2]))).chunk(2)
    ref, _ = info_nce_reference(z1, z2, cfg.method.temperature)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert 0.0 <= logs["pos_top1"] <= 1.0


def test_supcon_is_label_attraction(kit):
    m, cfg = make(kit, "supcon")
    batch = batch_of(kit)
    loss, _ = m.training_step(batch, StepContext())
    (x1, x2), y = batch
    z1, z2 = m.head(m.encoder(torch.cat([x1, x2]))).chunk(2)
    ref, _ = info_nce_reference(z1, z2, cfg.method.temperature, labels=y, fn_mode="attract")
    plain, _ = info_nce_reference(z1, z2, cfg.method.temperature)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(loss, plain)  # the labels changed the objective


def test_supervised_is_cross_entropy(kit):
    m, _ = make(kit, "supervised")
    x, y = batch_of(kit, two_views=False)
    loss, logs = m.training_step((x, y), StepContext())
    logits = m.classifier(m.encoder(x))
    torch.testing.assert_close(loss, F.cross_entropy(logits, y))
    assert logs["train_acc"] == pytest.approx(float((logits.argmax(1) == y).float().mean()))


def test_moco_uses_queue_as_extra_keys_and_momentum_update(kit):
    m, cfg = make(kit, "moco")
    b1, b2 = batch_of(kit, seed=0), batch_of(kit, seed=1)
    m.training_step(b1, StepContext())  # fills the queue with b1's keys
    assert int(m.queue_len) == 16
    queued = m.queue[:16].clone()
    loss, _ = m.training_step(b2, StepContext())
    (x1, x2), y = b2
    q = m.head(m.encoder(x1))
    k = F.normalize(m.key_head(m.key_encoder(x2)), dim=1)
    ref, _ = cross_info_nce_reference(q, torch.cat([k, queued]), cfg.method.temperature)
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-6)
    # momentum: key <- 0.9 key + 0.1 online
    with torch.no_grad():
        m.encoder.fc.weight.add_(1.0)
    before = m.key_encoder.fc.weight.clone()
    m.after_optimizer_step()
    torch.testing.assert_close(m.key_encoder.fc.weight, 0.9 * before + 0.1 * m.encoder.fc.weight)


def test_moco_queue_is_a_ring_buffer(kit):
    m, _ = make(kit, "moco")  # queue of 32
    keys = [torch.full((12, 8), float(i)) for i in range(4)]
    for i, k in enumerate(keys):
        m._enqueue(k, torch.full((12,), i))
    # 48 keys written into 32 slots: slots 0..15 hold batches 2 (rows 8-11 -> slots 0..?) and 3
    expected = torch.cat([torch.full((12,), float(i)) for i in range(4)])[-32:]  # last 32 keys, in ring order
    order = (torch.arange(32) + 48) % 32  # slot of the oldest kept key is ptr = 48 % 32
    assert int(m.queue_len) == 32 and int(m.queue_ptr) == 48 % 32
    torch.testing.assert_close(m.queue[order, 0], expected)
    torch.testing.assert_close(m.queue_labels[order].float(), expected)


def test_fn_kwargs_and_warmup():
    y = torch.tensor([0, 1])
    assert fn_loss_kwargs(FalseNegativeConfig("none"), 5, y) == {}
    assert fn_loss_kwargs(FalseNegativeConfig("topk", topk=3, warmup_epochs=2), 1, y) == {}
    assert fn_loss_kwargs(FalseNegativeConfig("topk", topk=3, warmup_epochs=2), 2, y) == {
        "fn_mode": "eliminate", "fn_topk": 3}
    assert fn_loss_kwargs(FalseNegativeConfig("threshold", threshold=0.7, mode="attract"), 0, y) == {
        "fn_mode": "attract", "fn_threshold": 0.7}
    assert fn_loss_kwargs(FalseNegativeConfig("oracle"), 0, y)["labels"] is y
    with pytest.raises(ValueError, match="oracle"):
        fn_loss_kwargs(FalseNegativeConfig("oracle"), 0, None)
    with pytest.raises(ValueError, match="fn.detector"):
        FalseNegativeConfig("magic").validate()


def test_fn_logs_precision_recall_by_hand():
    stats = {"pos_top1": torch.tensor([1.0, 0.0]), "fn_found": torch.tensor([2.0, 2.0]),
             "fn_correct": torch.tensor([1.0, 2.0]), "fn_possible": torch.tensor([3.0, 3.0])}
    logs = fn_logs(stats)
    assert logs["fn_precision"] == pytest.approx(3 / 4)
    assert logs["fn_recall"] == pytest.approx(3 / 6)
    assert logs["fn_found_per_row"] == pytest.approx(2.0)
    none_found = fn_logs({**stats, "fn_found": torch.zeros(2), "fn_correct": torch.zeros(2)})
    assert math.isnan(none_found["fn_precision"]) and none_found["fn_recall"] == 0.0


def test_oracle_detector_has_perfect_precision_and_recall(kit):
    m, _ = make(kit, "simclr", fn={"detector": "oracle"})
    _, logs = m.training_step(batch_of(kit), StepContext())
    assert logs["fn_precision"] == 1.0 and logs["fn_recall"] == 1.0


def test_topk_detector_finds_k_per_row(kit):
    m, _ = make(kit, "simclr", fn={"detector": "topk", "topk": 3})
    _, logs = m.training_step(batch_of(kit), StepContext())
    assert logs["fn_found_per_row"] == pytest.approx(3.0)
    assert 0.0 <= logs["fn_precision"] <= 1.0


@pytest.mark.parametrize("name,fn", [
    ("simclr", {}), ("simclr", {"detector": "threshold", "threshold": 0.98}), ("simclr", {"detector": "topk", "topk": 2}),
    ("simclr", {"detector": "oracle", "mode": "attract"}), ("moco", {}), ("moco", {"detector": "oracle"}),
    ("supcon", {}), ("supervised", {}),
])
def test_a_few_steps_reduce_the_loss(kit, name, fn):
    m, _ = make(kit, name, fn=fn)
    batch = batch_of(kit, n=16, two_views=name != "supervised")
    opt = torch.optim.Adam(m.parameters_to_optimize(), lr=0.01)
    losses = []
    for step in range(18):
        loss, _ = m.training_step(batch, StepContext(global_step=step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        m.after_optimizer_step()
        losses.append(float(loss.detach()))
    start = losses[2]  # MoCo: the queue is full from step 2 on
    assert start > 0 and losses[-1] < 0.9 * start, losses


# ----------------------------------------------------------------------------------- collapse guard


def test_embed_std_is_one_when_spread_and_zero_when_collapsed():
    from vidcsl.methods.collapse import collapse_reason, embedding_std

    torch.manual_seed(0)
    spread = torch.randn(4096, 32)  # isotropic: per-dimension std of the unit vectors ~ 1/sqrt(d)
    assert embedding_std(spread) == pytest.approx(1.0, abs=0.03)
    assert embedding_std(3.0 * spread + 0.0) == pytest.approx(embedding_std(spread))  # scale-free
    constant = torch.ones(64, 32) * torch.randn(1, 32)
    assert embedding_std(constant) < 1e-6
    near = constant + 1e-4 * torch.randn(64, 32)
    assert 0 < embedding_std(near) < 0.02
    assert collapse_reason({"embed_std": embedding_std(near)}, 0.02).startswith("embed_std = ")
    assert collapse_reason({"embed_std": embedding_std(spread)}, 0.02) is None
    assert collapse_reason({"embed_std": 0.0}, 0.0) is None  # 0 turns the guard off
    assert collapse_reason({}, 0.02) is None  # methods without embeddings (supervised) are not watched


class ConstantFromEpoch1(torch.utils.data.Dataset):
    """Two-view samples that all become one constant image from epoch 1 on: a forced collapse."""

    def __init__(self, base):
        self.base, self.epoch = base, 0

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.base)

    def __getitem__(self, i):
        (x1, x2), y = self.base[i]
        if self.epoch >= 1:
            x1 = x2 = torch.full_like(x1, 0.5)
        return (x1, x2), y


@pytest.mark.parametrize("name", ["simclr", "byol", "simsiam", "vicreg", "barlow"])
def test_collapse_stops_the_run_and_keeps_the_checkpoint_before_it(kit, tmp_path, name):
    from vidcsl.train.checkpoint import load_checkpoint
    from vidcsl.train.trainer import RepresentationCollapseError, Trainer

    def run(folder, **train):
        cfg = kit.cfg(method={"name": name}, optim={"name": "sgd", "lr": 0.05},
                      train={"epochs": 2, "batch_size": 16, "ckpt_every": 1, "knn_every": -1, **train})
        data = kit.bundle()
        data.train = ConstantFromEpoch1(data.train)
        return Trainer(cfg, run_dir=tmp_path / folder, data=data, encoder=kit.TinyEncoder()).fit()

    with pytest.raises(RepresentationCollapseError,
                       match=r"representation collapse at epoch 1, optimiser step 3: embed_std = .* "
                             r"method\.collapse_std = 0\.02.*Last good checkpoint: .*last\.pt"):
        run("collapsed")  # 48 samples / 16 = 3 steps per epoch: steps 0-2 are healthy
    kept = load_checkpoint(tmp_path / "collapsed")
    assert kept["progress"]["global_step"] == 3
    healthy = run("healthy", max_steps=3)  # the same three steps, uninterrupted
    for key, value in healthy.method.state_dict().items():
        torch.testing.assert_close(kept["model"][key], value, msg=key)
