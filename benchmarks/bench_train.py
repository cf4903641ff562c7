"""Training throughput (samples/s) and peak memory of the demo models, per loss backend.

Each case (model x method x loss backend) runs in its own subprocess so its peak memory is its own:
CUDA peak allocated memory on a GPU, peak resident set size (RSS, includes the Python runtime) on CPU.
Inputs are random tensors of the demo shapes, so the numbers are model + loss + optimiser, not decoding.

    python benchmarks/bench_train.py --small          # quick CPU check
    python benchmarks/bench_train.py                  # larger batches / more steps (GPU if present)

Writes benchmarks/results/bench_train.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"

MODELS = {  # name -> (encoder, input shape of one sample)
    "image small_cnn": ("small_cnn", (3, 32, 32)),
    "video small_cnn3d": ("small_cnn3d", (3, 8, 32, 32)),
}


def run_case(model: str, method: str, backend: str, batch: int, steps: int, device: str) -> dict:
    """Time ``steps`` optimiser steps (after 2 warm-up steps) in this process."""
    import torch

    sys.path.insert(0, str(ROOT))
    from vidcsl.config import load_config
    from vidcsl.methods.base import StepContext, build_method
    from vidcsl.models.registry import build_encoder

    encoder_name, shape = MODELS[model]
    cfg = load_config(None, [f"method.name={method}", f"method.loss_backend={backend}"])
    dev = torch.device(device)
    torch.manual_seed(0)
    m = build_method(cfg, build_encoder(encoder_name), 10).to(dev)
    opt = torch.optim.SGD(m.parameters_to_optimize(), lr=0.01, momentum=0.9)
    x1, x2 = torch.rand(batch, *shape, device=dev), torch.rand(batch, *shape, device=dev)
    y = torch.randint(0, 10, (batch,), device=dev)
    b = (x1, y) if method == "supervised" else ((x1, x2), y)
    use_bf16 = dev.type == "cuda"

    def step(i):
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, _ = m.training_step(b, StepContext(global_step=i))
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()
        m.after_optimizer_step()

    for i in range(2):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = (torch.cuda.max_memory_allocated() if dev.type == "cuda"
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"model": model, "method": method, "loss_backend": backend, "device": device, "batch": batch,
            "steps": steps, "samples_per_s": batch * steps / seconds, "ms_per_step": 1000 * seconds / steps,
            "peak_mem_mb": peak / 2**20, "peak_mem_kind": "cuda allocated" if dev.type == "cuda" else "rss"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick run: small batches, few steps")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return
    import torch
    from tqdm import tqdm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    batch = {"image small_cnn": 64 if args.small else 256, "video small_cnn3d": 8 if args.small else 64}
    steps = 3 if args.small else 20
    backends = ["torch", "reference"] + (["triton"] if device == "cuda" else [])
    cases = [(model, "simclr", b) for model in MODELS for b in backends]
    cases += [(model, "supervised", "auto") for model in MODELS]
    rows = []
    for model, method, backend in tqdm(cases, desc="bench_train"):
        spec = json.dumps({"model": model, "method": method, "backend": backend, "batch": batch[model],
                           "steps": steps, "device": device})
        out = subprocess.run([sys.executable, __file__, "--case", spec], capture_output=True, text=True)
        if out.returncode != 0:
            tqdm.write(f"{model} {method} {backend}: failed\n{out.stderr[-2000:]}")
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_train.json").write_text(json.dumps(rows, indent=2) + "\n")
    lines = ["| model | method | loss backend | device | batch | samples/s | ms/step | peak MB |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['method']} | {r['loss_backend']} | {r['device']} | {r['batch']} | "
              f"{r['samples_per_s']:.1f} | {r['ms_per_step']:.1f} | {r['peak_mem_mb']:.0f} ({r['peak_mem_kind']}) |"
              for r in rows]
    table = "\n".join(lines)
    (RESULTS / "bench_train.md").write_text("# Training throughput\n\n" + table + "\n")
    print(table)


if __name__ == "__main__":
    main()
