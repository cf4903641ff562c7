"""OpenMP wait policy on a shared CPU: the demo's evaluation work alone and beside another busy process.

    .venv/bin/python benchmarks/bench_contention.py            # about 2 minutes on 2 cores
    .venv/bin/python benchmarks/bench_contention.py --small    # seconds

By default libgomp (PyTorch's CPU threads on Linux) lets idle threads spin for a while before they sleep.
On a machine whose cores are also used by another process (a DataLoader worker, a second job) the spinning
threads steal the cores the working ones need, and small parallel ops slow down many times over.
``vidcsl``'s command line therefore sets ``OMP_WAIT_POLICY=PASSIVE`` unless the user set it. This script
measures the choice: a PGD workload shaped like the demo's evaluation (small CNN, 100 images of 32x32,
forward + backward per step) in a fresh process per policy, alone and beside a process that multiplies
matrices on every core. Prints a Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"
ROOT = Path(__file__).resolve().parents[1]
POLICIES = {"default (spin, then sleep)": None, "PASSIVE (vidcsl's CLI)": "PASSIVE"}

WORKLOAD = """
import sys, time, torch
sys.path.insert(0, {root!r})
from vidcsl.models.registry import build_encoder
torch.manual_seed(0)
enc = build_encoder("small_cnn")
head = torch.nn.Linear(enc.feature_dim, 10)
model = torch.nn.Sequential(enc, head).eval()
x = torch.rand(100, 3, 32, 32)
y = torch.randint(0, 10, (100,))
for p in model.parameters():
    p.requires_grad_(False)
def run(steps):
    xa = x.clone()
    for _ in range(steps):
        xa.requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xa), y)
        (g,) = torch.autograd.grad(loss, xa)
        xa = (xa.detach() + g.sign() / 255).clamp(0, 1)
run(2)
t = time.perf_counter()
run({steps})
print(time.perf_counter() - t)
"""

NOISE = """
import torch
a = torch.rand(256, 256)
while True:
    a = (a @ a).tanh()
"""


def timed(steps: int, policy: str | None) -> float:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    code = WORKLOAD.format(root=str(ROOT), steps=steps)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="few steps (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    steps = 10 if args.small else 60
    rows = []
    for setting in ("alone", "beside a busy process"):
        noise = None
        if setting != "alone":  # the neighbour keeps its default policy: it is someone else's program
            noise = subprocess.Popen([sys.executable, "-c", NOISE], stdout=subprocess.DEVNULL)
            time.sleep(2)
        try:
            for name, policy in POLICIES.items():
                rows.append({"setting": setting, "policy": name, "steps": steps, "seconds": timed(steps, policy)})
                print(rows[-1], flush=True)
        finally:
            if noise is not None:
                noise.kill()
                noise.wait()
    base = {r["setting"]: r["seconds"] for r in rows if r["policy"].startswith("default")}
    for r in rows:
        r["speedup_vs_default"] = base[r["setting"]] / r["seconds"]
    lines = ["# OpenMP wait policy: PGD on a small CNN (100x3x32x32), alone and beside a busy process", "",
             "| setting | policy | steps | seconds | speedup vs default |", "|---|---|---:|---:|---:|"]
    lines += [f"| {r['setting']} | {r['policy']} | {r['steps']} | {r['seconds']:.2f} | {r['speedup_vs_default']:.2f}x |"
              for r in rows]
    load = os.getloadavg()[0]
    lines += ["", f"{os.cpu_count()} CPUs, 1-minute load average {load:.2f} at the end (the busy neighbour included)."]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    tag = "_small" if args.small else ""
    meta = {"cpus": os.cpu_count(), "platform": platform.platform(), "load_avg_end": load, "small": args.small}
    (args.out / f"bench_contention{tag}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    (args.out / f"bench_contention{tag}.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
