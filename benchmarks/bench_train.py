"""Training throughput (samples/s) and peak memory of the demo models, per loss backend; and the cost of the
demo's sub-runs (training + evaluation, data loading included) with ``--demo``.

Each case (model x method x loss backend) runs in its own subprocess so its peak memory is its own:
CUDA peak allocated memory on a GPU, peak resident set size (RSS, includes the Python runtime) on CPU.
Inputs are random tensors of the demo shapes, so the numbers are model + loss + optimiser, not decoding.

    python benchmarks/bench_train.py --small          # quick CPU check
    python benchmarks/bench_train.py                  # larger batches / more steps (GPU if present)

Writes benchmarks/results/bench_train.{json,md}.

``--demo`` trains and evaluates sub-runs of the demo study (``configs/study_demo.yaml``: its training
overrides and evaluation settings) exactly as ``vidcsl demo`` does, each in its own subprocess, and reports
wall and CPU seconds (user + sys of the process and its DataLoader workers) of training and evaluation, and
the load average around them (the machine may be shared: compare CPU seconds). ``--tree`` runs the same
sub-runs from other source trees (e.g. an export of the base commit), interleaved, for a before/after table:

    python benchmarks/bench_train.py --demo --small                        # 2 sub-runs, 2 epochs
    python benchmarks/bench_train.py --demo --tree /tmp/base --repeat 3    # before (/tmp/base) vs this tree

Writes benchmarks/results/bench_demo_runs[_small].{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
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


# ------------------------------------------------------------------------------------- demo sub-runs
DEMO_SUBRUNS = ["images/sl", "images/csl", "images/clae", "video/sl", "video/csl"]
DEMO_SUBRUNS_SMALL = ["images/csl", "video/sl"]
SMALL_OVERRIDES = ["train.epochs=2"]  # --small: the demo's settings but 2 epochs


def _cpu_seconds() -> float:
    """user + sys of this process and of its finished children (DataLoader workers)."""
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def run_demo_case(tree: str, study: str, subrun: str, overrides: list[str]) -> dict:
    """Train then evaluate one demo sub-run with the sources of ``tree`` (in a fresh run folder)."""
    import gc

    sys.path.insert(0, tree)
    from vidcsl.robustness import study as S
    from vidcsl.robustness.evaluate import eval_config_from_dict, evaluate_run

    track_name, variant = subrun.split("/")
    with tempfile.TemporaryDirectory(prefix="bench_demo_") as tmp:
        st = S.load_study_config(study, [f"runs_dir={tmp}", "progress=false"])
        track = next(t for t in st.tracks if t.name == track_name)
        track.overrides = [*track.overrides, *overrides]
        run_dir = Path(tmp) / track_name / variant
        cfg = S.variant_config(st, track, variant, run_dir)
        ecfg = S.for_run(eval_config_from_dict({**st.eval, **track.eval, "progress": False, "device": st.device}),
                         cfg.method.name == "supervised")
        out = {"subrun": subrun, "load_before": os.getloadavg()[0]}
        wall, cpu = time.perf_counter(), _cpu_seconds()
        S.train_variant(cfg, run_dir)
        gc.collect()  # the loader's workers end with it
        out["train_wall_s"], out["train_cpu_s"] = time.perf_counter() - wall, _cpu_seconds() - cpu
        wall, cpu = time.perf_counter(), _cpu_seconds()
        evaluate_run(run_dir, ecfg)
        gc.collect()
        out["eval_wall_s"], out["eval_cpu_s"] = time.perf_counter() - wall, _cpu_seconds() - cpu
        metrics = json.loads((run_dir / "metrics.json").read_text())
        out.update(steps=metrics["global_step"], samples_per_s=metrics["samples_per_s"],
                   final_epoch_loss=metrics["epoch_loss"][-1], load_after=os.getloadavg()[0])
    return out


def demo_main(args) -> None:
    """Each sub-run of each tree in its own subprocess, trees interleaved, ``--repeat`` times; median table."""
    from tqdm import tqdm

    trees = [str(ROOT)] + [str(Path(t).resolve()) for t in args.tree]
    subruns = args.subruns or (DEMO_SUBRUNS_SMALL if args.small else DEMO_SUBRUNS)
    overrides = SMALL_OVERRIDES if args.small else []
    jobs = [(rep, s, t) for rep in range(args.repeat) for s in subruns for t in trees]
    rows = []
    for rep, subrun, tree in tqdm(jobs, desc="demo sub-runs"):
        study = args.study or str(Path(tree) / "configs" / "study_demo.yaml")
        spec = json.dumps({"tree": tree, "study": study, "subrun": subrun, "overrides": overrides})
        env = {**os.environ, "PYTHONPATH": tree}
        start = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--demo-case", spec], capture_output=True, text=True,
                             env=env, cwd=tree)
        if out.returncode != 0:
            tqdm.write(f"{subrun} ({tree}): failed\n{out.stderr[-3000:]}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        row.update(tree=tree, repeat=rep, process_wall_s=time.perf_counter() - start)
        rows.append(row)
    stem = "bench_demo_runs_small" if args.small else "bench_demo_runs"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
    keys = ("train_wall_s", "train_cpu_s", "eval_wall_s", "eval_cpu_s", "samples_per_s", "load_before")
    lines = ["| sub-run | tree | runs | train wall s | train CPU s | eval wall s | eval CPU s | train samples/s | "
             "load avg |", "|---|---|---|---|---|---|---|---|---|"]
    for subrun in subruns:
        for tree in trees:
            mine = [r for r in rows if r["subrun"] == subrun and r["tree"] == tree]
            if mine:
                med = {k: statistics.median(r[k] for r in mine) for k in keys}
                name = "this tree" if tree == str(ROOT) else tree
                lines.append(f"| {subrun} | {name} | {len(mine)} | {med['train_wall_s']:.1f} | "
                             f"{med['train_cpu_s']:.1f} | {med['eval_wall_s']:.1f} | {med['eval_cpu_s']:.1f} | "
                             f"{med['samples_per_s']:.0f} | {med['load_before']:.2f} |")
    table = "\n".join(lines)
    note = (f"Medians over {args.repeat} run(s) per sub-run and tree ({' '.join(overrides) or 'demo settings'}); "
            f"CPU = user + sys of the sub-run's process and its workers; load avg = 1-min load before each run.")
    (RESULTS / f"{stem}.md").write_text(f"# Demo sub-runs: training and evaluation cost\n\n{note}\n\n{table}\n")
    print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick run: small batches, few steps")
    parser.add_argument("--device", default=None, help="cpu | cuda (default: cuda if available)")
    parser.add_argument("--demo", action="store_true", help="time the demo study's sub-runs (train + evaluate)")
    parser.add_argument("--tree", action="append", default=[], help="--demo: another source tree to compare")
    parser.add_argument("--subruns", nargs="+", default=None, help=f"--demo: track/variant (default "
                        f"{' '.join(DEMO_SUBRUNS)}; --small: {' '.join(DEMO_SUBRUNS_SMALL)})")
    parser.add_argument("--repeat", type=int, default=1, help="--demo: runs per sub-run and tree")
    parser.add_argument("--study", default=None, help="--demo: study file (default: each tree's "
                        "configs/study_demo.yaml)")
    parser.add_argument("--case", default=None, help=argparse.SUPPRESS)  # internal: one case, JSON on stdout
    parser.add_argument("--demo-case", default=None, help=argparse.SUPPRESS)  # internal: one demo sub-run
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(**json.loads(args.case))))
        return
    if args.demo_case:
        print(json.dumps(run_demo_case(**json.loads(args.demo_case))))
        return
    if args.demo:
        demo_main(args)
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
