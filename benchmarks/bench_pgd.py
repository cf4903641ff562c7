"""Fused PGD step vs the unfused torchattacks sequence: time per step and bytes moved.

    .venv/bin/python benchmarks/bench_pgd.py --small      # quick CPU run
    python benchmarks/bench_pgd.py                        # full sizes (on a GPU also times triton)

Cases: an image batch (256x3x32x32) and a clip batch (32x3x16x112x112), L-inf and L2, fp32. Methods:
``unfused`` (torchattacks' op sequence, each op a full pass over a new tensor), ``torch`` (the fused
eager path, ``backend="torch"``), ``triton`` (CUDA only). "MB moved" is the modelled DRAM traffic of
each method (passes over a batch-sized fp32 tensor, counted from its ops; the torch path counts only
compulsory traffic because its intermediates stay in cache); GB/s = MB moved / time. Prints a
Markdown table and writes JSON to ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kernels.pgd import pgd_step  # noqa: E402

FULL = {"image": (256, 3, 32, 32), "clip": (32, 3, 16, 112, 112)}
SMALL = {"image": (64, 3, 32, 32), "clip": (4, 3, 8, 56, 56)}
STEP = {"linf": (2 / 255, 8 / 255), "l2": (0.1, 0.5)}

# Passes over a batch-sized tensor (reads + writes) of each method, counted from its ops.
PASSES = {
    # sign 2, mul 2, add 3, sub 3, clamp 2, add 3, clamp 2
    ("unfused", "linf"): 17,
    # norm 1, div 2, mul 2, add 3, sub 3, norm 1, mul 2, add 3, clamp 2
    ("unfused", "l2"): 19,
    ("torch", "linf"): 4,  # read x, g, x0; write out (intermediates are cache-resident chunks)
    ("torch", "l2"): 4,
    ("triton", "linf"): 4,  # one elementwise kernel
}


def triton_l2_passes(per_sample: int) -> int:
    """One-program-per-sample kernel: 4 passes; three-kernel path: g, then x g x0, then x g x0 + out."""
    from kernels.pgd_triton import MAX_SINGLE_ELEMS

    return 4 if per_sample <= MAX_SINGLE_ELEMS else 8


def unfused_step(x, g, x0, a, eps, norm):
    """torchattacks' PGD / PGDL2 update as written there (fp32 inputs)."""
    b = x.shape[0]
    view = (-1,) + (1,) * (x.dim() - 1)
    if norm == "linf":
        adv = x + a * g.sign()
        delta = torch.clamp(adv - x0, min=-eps, max=eps)
    else:
        gn = torch.norm(g.view(b, -1), p=2, dim=1) + 1e-10
        adv = x + a * (g / gn.view(view))
        delta = adv - x0
        dn = torch.norm(delta.view(b, -1), p=2, dim=1)
        delta = delta * torch.min(eps / dn, torch.ones_like(dn)).view(view)
    return torch.clamp(x0 + delta, min=0, max=1)


def make_step(method, x, g, x0, a, eps, norm):
    """A no-argument callable doing one step with ``method`` (fused paths write into a reused ``out``)."""
    if method == "unfused":
        return lambda: unfused_step(x, g, x0, a, eps, norm)
    out = torch.empty_like(x)
    return lambda: pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, out=out, backend=method)


def time_ms(fn, device: torch.device, repeats: int, warmup: int = 2) -> tuple[float, float]:
    """(min, median) wall time of ``fn`` in ms, synchronised on CUDA. The min is the figure compared:
    on a shared machine the median mostly measures other people's load."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return min(times), statistics.median(times)


def run(shapes: dict, device: torch.device, repeats: int) -> list[dict]:
    methods = ["unfused", "torch"] + (["triton"] if device.type == "cuda" else [])
    jobs = [(case, norm, m) for case in shapes for norm in ("linf", "l2") for m in methods]
    rows, cache = [], {}
    for case, norm, method in tqdm(jobs, desc="bench_pgd", file=sys.stderr):
        shape = shapes[case]
        if case not in cache:
            gen = torch.Generator().manual_seed(0)
            x0 = torch.rand(shape, generator=gen)
            x = (x0 + 0.02 * torch.randn(shape, generator=gen)).clamp(0, 1)
            cache = {case: tuple(t.to(device) for t in (x, torch.randn(shape, generator=gen), x0))}
        x, g, x0 = cache[case]
        a, eps = STEP[norm]
        fn = make_step(method, x, g, x0, a, eps, norm)
        ms, median_ms = time_ms(fn, device, repeats)
        diff = (fn() - unfused_step(x, g, x0, a, eps, norm)).abs().max().item()
        per_sample = x[0].numel()
        passes = triton_l2_passes(per_sample) if (method, norm) == ("triton", "l2") else PASSES[(method, norm)]
        mb = passes * x.numel() * x.element_size() / 1e6
        rows.append(dict(case=case, shape=list(shape), norm=norm, method=method, ms_per_step=ms, median_ms=median_ms,
                         mb_moved=mb, gb_per_s=mb / ms, max_abs_diff_vs_unfused=diff))
    for row in rows:
        base = next(r for r in rows if (r["case"], r["norm"], r["method"]) == (row["case"], row["norm"], "unfused"))
        row["speedup_vs_unfused"] = base["ms_per_step"] / row["ms_per_step"]
    return rows


def markdown(rows: list[dict]) -> str:
    head = "| case | shape | norm | method | ms/step (min) | median | MB moved | GB/s | speedup | max diff |"
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['case']} | {'x'.join(map(str, r['shape']))} | {r['norm']} | {r['method']} | "
            f"{r['ms_per_step']:.3f} | {r['median_ms']:.3f} | {r['mb_moved']:.1f} | {r['gb_per_s']:.1f} | "
            f"{r['speedup_vs_unfused']:.2f}x | {r['max_abs_diff_vs_unfused']:.1e} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", action="store_true", help="small batches, few repeats (a quick CPU check)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (1 gives stable figures on a shared machine; default: torch's)")
    p.add_argument("--out", type=Path, default=None, help="JSON path (default benchmarks/results/...)")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    repeats = args.repeats or (15 if args.small else 30)
    rows = run(SMALL if args.small else FULL, device, repeats)
    table = markdown(rows)
    print(table)
    out = args.out or Path(__file__).parent / "results" / f"bench_pgd{'_small' if args.small else ''}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = dict(device=str(device), gpu=torch.cuda.get_device_name() if device.type == "cuda" else None,
                cpu_threads=torch.get_num_threads(), torch=torch.__version__, platform=platform.platform(),
                repeats=repeats, small=args.small)
    out.write_text(json.dumps(dict(meta=meta, rows=rows), indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
