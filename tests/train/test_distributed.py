"""2-process gloo DDP: loss, gradients and the collapse measure equal single-process training on the same
global batch, for every method with cross-sample terms (negatives or batch statistics).

The DDP side runs in a subprocess (torch.multiprocessing spawn of two ranks); this file computes the
single-process reference itself and compares. Checks the scaling: each rank's loss is the mean over its
own rows of the all-gathered batch and DDP averages gradients, which must give the global mean.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap

import pytest
import torch
from torch.utils.data import default_collate

from vidcsl.methods.base import StepContext, build_method

CASES = {  # name -> (method, fn section, method options)
    "simclr": ("simclr", {}, {}),
    "simclr_topk": ("simclr", {"detector": "topk", "topk": 2}, {}),
    "simclr_oracle_attract": ("simclr", {"detector": "oracle", "mode": "attract"}, {}),
    "supcon": ("supcon", {}, {}),
    "moco": ("moco", {}, {"queue_size": 64}),
    # batch statistics (VICReg's variance / covariance, Barlow's standardisation and cross-correlation)
    # must be those of the global batch: a per-rank statistic would make these differ
    "byol": ("byol", {}, {}),
    "simsiam": ("simsiam", {}, {"predictor_hidden_dim": 8}),  # the default 8 // 4 = 2 ReLUs can all be dead
    "vicreg": ("vicreg", {}, {}),
    "barlow": ("barlow", {}, {}),
}

WORKER = textwrap.dedent('''
    import os, sys
    import torch
    import torch.multiprocessing as mp
    from torch import nn

    def main(rank, world, port, path):
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                          WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
        torch.set_num_threads(1)
        from vidcsl.config import config_from_dict
        from vidcsl.methods.base import StepContext, build_method
        from vidcsl.train import distributed as D
        info = D.init_distributed("cpu")
        assert info.world_size == world and info.rank == rank
        data = torch.load(path, weights_only=True)
        out = {}
        for name, raw in data["cases"].items():
            enc = nn.Linear(48, 16)  # same shapes as the test's TinyEncoder (flatten + linear + relu)
            enc.feature_dim = 16
            encoder = nn.Sequential(nn.Flatten(), enc, nn.ReLU())
            encoder.feature_dim = 16
            method = build_method(config_from_dict(raw), encoder, 4)
            method.load_state_dict(data["init"][name])
            model = torch.nn.parallel.DistributedDataParallel(method)
            n = data["x1"].shape[0] // world
            rows = slice(rank * n, (rank + 1) * n)
            batch = ((data["x1"][rows], data["x2"][rows]), data["y"][rows])
            ctx = StepContext(rank=rank, world_size=world, gather=D.gather_with_grad, gather_nograd=D.gather_nograd)
            loss, logs = model(batch, ctx)
            loss.backward()
            mean_loss = D.all_reduce(loss.detach().clone(), "mean")
            out[name] = {"loss": mean_loss, "embed_std": torch.tensor(logs["embed_std"]),
                         "grads": {k: p.grad for k, p in method.named_parameters() if p.grad is not None}}
        if rank == 0:
            torch.save(out, path + ".out")
        D.cleanup_distributed()

    if __name__ == "__main__":
        mp.spawn(main, args=(2, int(sys.argv[1]), sys.argv[2]), nprocs=2, join=True)
''')


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SeqEncoder(torch.nn.Sequential):
    feature_dim = 16


def test_two_process_ddp_equals_single_process(kit, tmp_path):
    torch.manual_seed(0)
    ds = kit.NoisyViews(16)
    (x1, x2), y = default_collate([ds[i] for i in range(16)])
    methods, raws = {}, {}
    for name, (method, fn, options) in CASES.items():
        cfg = kit.cfg(method={"name": method, "options": options}, fn=fn)
        torch.manual_seed(1)
        encoder = SeqEncoder(torch.nn.Flatten(), torch.nn.Linear(48, 16), torch.nn.ReLU())
        methods[name] = build_method(cfg, encoder, 4)
        from vidcsl.config import config_to_dict

        raws[name] = config_to_dict(cfg)
    init = {k: {n: t.clone() for n, t in m.state_dict().items()} for k, m in methods.items()}
    path = tmp_path / "batch.pt"
    torch.save({"x1": x1, "x2": x2, "y": y, "init": init, "cases": raws}, path)
    script = tmp_path / "ddp_worker.py"
    script.write_text(WORKER)
    proc = subprocess.run([sys.executable, str(script), str(free_port()), str(path)], capture_output=True,
                          text=True, timeout=300, cwd=str(tmp_path),
                          env={**__import__("os").environ, "PYTHONPATH": str(__import__("pathlib").Path(
                              __file__).resolve().parents[2])})
    assert proc.returncode == 0, proc.stderr[-3000:]
    ddp = torch.load(str(path) + ".out", weights_only=True)
    for name, method in methods.items():
        loss, logs = method.training_step(((x1, x2), y), StepContext())
        loss.backward()
        torch.testing.assert_close(ddp[name]["loss"], loss.detach(), rtol=1e-5, atol=1e-6, msg=name)
        # the collapse guard's measure covers the global batch, so every rank decides alike
        assert float(ddp[name]["embed_std"]) == pytest.approx(logs["embed_std"], rel=1e-5), name
        grads = {k: p.grad for k, p in method.named_parameters() if p.grad is not None}
        assert grads.keys() == ddp[name]["grads"].keys(), name
        for k in grads:
            assert grads[k].abs().max() > 0, (name, k)
            torch.testing.assert_close(ddp[name]["grads"][k], grads[k], rtol=1e-4, atol=1e-6,
                                       msg=lambda m, n=name, k=k: f"{n} {k}: {m}")


@pytest.mark.parametrize("world", [1])
def test_single_process_needs_no_process_group(world):
    from vidcsl.train import distributed as D

    info = D.init_distributed("cpu")
    assert (info.world_size, info.rank, info.is_main) == (world, 0, True)
    x = torch.randn(3, 2, requires_grad=True)
    assert D.gather_with_grad(x) is x and D.gather_nograd(x) is x
