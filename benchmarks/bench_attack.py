"""PGD-20 throughput (samples/s): vidcsl.attacks.pgd (fused kernels.pgd.pgd_step) vs torchattacks' PGD on
the same model and inputs (random_start=False), checking that both produce the same adversarial batch.

    .venv/bin/python benchmarks/bench_attack.py --small     # quick CPU run
    python benchmarks/bench_attack.py                       # full sizes (uses CUDA when present)

Models: the registry's ``small_cnn`` (images) and ``small_cnn3d`` (clips) with a linear head. The
attack's time is dominated by the model's forward/backward, so the two should be close; the point of the
check is that the fused step changes nothing. Writes Markdown + JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import torchattacks  # noqa: E402

from vidcsl.attacks.pgd import pgd  # noqa: E402
from vidcsl.models.registry import build_encoder  # noqa: E402
from vidcsl.report.tables import to_markdown  # noqa: E402

FULL = {"small_cnn": (256, 3, 32, 32), "small_cnn3d": (16, 3, 16, 112, 112)}  # GPU sizes
CPU = {"small_cnn": (128, 3, 32, 32), "small_cnn3d": (4, 3, 8, 56, 56)}  # the full run on a CPU
SMALL = {"small_cnn": (16, 3, 32, 32), "small_cnn3d": (2, 3, 4, 32, 32)}
NORMS = {"linf": (8 / 255, 2 / 255, torchattacks.PGD), "l2": (0.5, 0.1, torchattacks.PGDL2)}


def classifier(name: str, device) -> nn.Module:
    torch.manual_seed(0)
    enc = build_encoder(name)
    return nn.Sequential(enc, nn.Linear(enc.feature_dim, 10)).to(device).eval()


def timed(fn, repeats: int, device, warmup: bool = True) -> tuple[float, torch.Tensor]:
    out = fn() if warmup else None
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def bench_case(model_name: str, norm: str, shape, steps: int, repeats: int, device, warmup: bool) -> dict:
    """Time both attacks on one (model, norm) case and compare their outputs."""
    model = classifier(model_name, device)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(shape, generator=g).to(device)
    y = torch.randint(0, 10, (x.shape[0],), generator=g).to(device)
    eps, alpha, cls = NORMS[norm]
    ours_t, ours = timed(lambda: pgd(model, x, y, eps=eps, alpha=alpha, steps=steps, norm=norm,
                                     random_start=False), repeats, device, warmup)
    ta = cls(model, eps=eps, alpha=alpha, steps=steps, random_start=False)
    ta_t, theirs = timed(lambda: ta(x, y), repeats, device, warmup)
    with torch.no_grad():
        acc_ours = (model(ours).argmax(1) == y).float().mean().item()
        acc_theirs = (model(theirs).argmax(1) == y).float().mean().item()
    return {
        "model": model_name, "norm": norm, "shape": "x".join(map(str, x.shape)), "steps": steps,
        "vidcsl_samples_per_s": x.shape[0] / ours_t, "torchattacks_samples_per_s": x.shape[0] / ta_t,
        "speedup": ta_t / ours_t, "max_abs_diff": (ours - theirs).abs().max().item(),
        "identical": bool(torch.equal(ours, theirs)),
        "robust_acc_vidcsl": acc_ours, "robust_acc_torchattacks": acc_theirs,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--small", action="store_true", help="tiny sizes for a CPU smoke run")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    shapes = SMALL if args.small else FULL if device.type == "cuda" else CPU
    repeats = args.repeats or (5 if args.small else 3)
    rows = []
    cases = [(m, n) for m in shapes for n in NORMS if not (n == "l2" and len(shapes[m]) == 5)]
    # torchattacks' PGDL2 reshapes norms to (B,1,1,1): images only, so no L2 row for clips.
    for model_name, norm in tqdm(cases, desc=f"PGD-{args.steps}"):
        rows.append(bench_case(model_name, norm, shapes[model_name], args.steps, repeats, device,
                               warmup=True))
    table = to_markdown(rows, digits=4)
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "bench_attack_small" if args.small else "bench_attack"
    meta = {"device": torch.cuda.get_device_name() if device.type == "cuda" else platform.processor() or "cpu",
            "torch": torch.__version__, "repeats": repeats}
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / f"{stem}.md").write_text(f"# PGD-{args.steps} throughput ({meta['device']})\n\n{table}")


if __name__ == "__main__":
    main()
