"""Forward + backward time and peak memory of NT-Xent vs batch size: fused paths vs materialised ones.

Methods: ``materialised`` (lightly-style NT-Xent: cross_entropy over the full 2N x 2N logits with the
diagonal masked; the leanest materialised version), ``reference`` (kernels.reference, materialised with
its masks), ``torch`` (kernels tiled path) and ``triton`` (only with CUDA). Each case runs in a fresh
subprocess, so one case's allocations cannot hide another's peak.

Memory method (reported in the output too):
* CPU: peak extra resident memory of the first forward+backward = VmHWM after it minus VmRSS before it,
  with the high-water mark reset through ``/proc/self/clear_refs`` just before the call. It counts every
  allocation that touched memory (autograd buffers, BLAS workspaces), not only tensors.
* CUDA: ``torch.cuda.max_memory_allocated`` minus the memory allocated before the call.
Time: median over the timed repeats after one warm-up call (the warm-up's time is kept as ``first_s``).

    python benchmarks/bench_info_nce.py --small           # 2N <= 4096, a minute or two on CPU
    python benchmarks/bench_info_nce.py --target          # CPU 2N = 32768, d = 128: torch vs materialised
    python benchmarks/bench_info_nce.py                   # full sweep 2N = 1k .. 64k, d = 128, 256
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
TEMPERATURE = 0.1
# Rough peak bytes per element of the 2N x 2N matrix, used only to skip cases that cannot fit in RAM.
MATERIALISED_BYTES_PER_ENTRY = {"materialised": 13, "reference": 40}


# ------------------------------------------------------------------------------------------------ worker side
def materialised_nt_xent(z1, z2, temperature):
    """Plain NT-Xent as common libraries write it: full logits, -inf diagonal, cross-entropy (O(N^2))."""
    import torch
    import torch.nn.functional as F

    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = z @ z.t() / temperature
    logits.fill_diagonal_(float("-inf"))
    targets = (torch.arange(2 * n, device=z.device) + n) % (2 * n)
    return F.cross_entropy(logits, targets)


def _loss_fn(method):
    from kernels.info_nce import info_nce
    from kernels.reference import info_nce_reference

    if method == "materialised":
        return materialised_nt_xent
    if method == "reference":
        return lambda a, b, t: info_nce_reference(a, b, t)[0]
    return lambda a, b, t: info_nce(a, b, t, backend=method)


def _vm(field: str) -> int:
    """A /proc/self/status memory field in bytes."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_case(method: str, two_n: int, d: int, device: str, repeats: int, threads: int = 0) -> dict:
    """One case in this (fresh) process: peak extra memory of the first fwd+bwd, then timed repeats.

    A tiny call first triggers lazy imports and one-time initialisation, which are not the method's memory.
    """
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    fn = _loss_fn(method)
    gen = torch.Generator().manual_seed(0)
    tiny = [torch.randn(32, d, generator=gen).to(device).requires_grad_() for _ in range(2)]
    fn(*tiny, TEMPERATURE).backward()
    z1 = torch.randn(two_n // 2, d, generator=gen).to(device).requires_grad_()
    z2 = torch.randn(two_n // 2, d, generator=gen).to(device).requires_grad_()
    cuda = device.startswith("cuda")

    def step():
        z1.grad = z2.grad = None
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(z1, z2, TEMPERATURE).backward()
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    if cuda:
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        first = step()
        peak = torch.cuda.max_memory_allocated() - base
        mem_method = "cuda max_memory_allocated - allocated before"
    else:
        base = _vm("VmRSS")
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset VmHWM to the current RSS
        first = step()
        peak = _vm("VmHWM") - base
        mem_method = "peak extra RSS (VmHWM after first call - VmRSS before; clear_refs reset)"
    times = [step() for _ in range(repeats)]
    return {"method": method, "two_n": two_n, "d": d, "device": device, "time_s": statistics.median(times),
            "first_s": first, "repeats": repeats, "peak_mem_bytes": int(peak), "mem_method": mem_method,
            "threads": torch.get_num_threads()}


# ------------------------------------------------------------------------------------------------ driver side
def _mem_available() -> int:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return 0


def _spawn(method, two_n, d, device, repeats, threads, timeout) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, str(two_n), str(d), device, str(repeats), str(threads)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        return {"method": method, "two_n": two_n, "d": d, "device": device,
                "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _target_summary(rows, repeats, threads, timeout) -> dict:
    """torch / materialised ratios at 2N = 32768; if the materialised case could not run (RAM), it is
    measured at 2N = 16384 and scaled by 4 (its time and memory are both O(N^2) at fixed d) -- flagged."""
    by = {r["method"]: r for r in rows}
    t, m = by.get("torch", {}), by.get("materialised", {})
    out = {"goal": "memory_ratio <= 0.10 and time_ratio <= 1.3", "materialised_extrapolated": False}
    if "time_s" not in m:
        half = _spawn("materialised", 16384, 128, "cpu", repeats, threads, timeout)
        rows.append(half)
        if "time_s" not in half:
            return {**out, "error": "materialised case failed at both sizes"}
        m = {"time_s": 4 * half["time_s"], "peak_mem_bytes": 4 * half["peak_mem_bytes"]}
        out["materialised_extrapolated"] = True
    if "time_s" not in t:
        return {**out, "error": t.get("error", "torch case missing")}
    return {**out, "torch_time_s": t["time_s"], "materialised_time_s": m["time_s"],
            "torch_peak_mem_bytes": t["peak_mem_bytes"], "materialised_peak_mem_bytes": m["peak_mem_bytes"],
            "memory_ratio": t["peak_mem_bytes"] / m["peak_mem_bytes"], "time_ratio": t["time_s"] / m["time_s"]}


def _fmt_mem(b):
    return "-" if b is None else f"{b / 2**20:,.1f} MiB"


def table(rows: list[dict]) -> str:
    lines = ["| method | 2N | d | fwd+bwd (s) | peak extra memory | note |", "|---|---:|---:|---:|---:|---|"]
    for r in rows:
        t = f"{r['time_s']:.4f}" if "time_s" in r else "-"
        lines.append(f"| {r['method']} | {r['two_n']} | {r['d']} | {t} | {_fmt_mem(r.get('peak_mem_bytes'))} | "
                     f"{r.get('error', r.get('skipped', ''))} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(11, 4.2))
    keys = sorted({(r["method"], r["d"]) for r in rows if "time_s" in r})
    for method, d in keys:
        pts = sorted((r["two_n"], r["time_s"], r["peak_mem_bytes"]) for r in rows
                     if r["method"] == method and r["d"] == d and "time_s" in r)
        xs = [p[0] for p in pts]
        ax_t.plot(xs, [p[1] for p in pts], marker="o", label=f"{method} d={d}")
        ax_m.plot(xs, [max(p[2], 1) / 2**20 for p in pts], marker="o", label=f"{method} d={d}")
    for ax, title in ((ax_t, "forward + backward time (s)"), (ax_m, "peak extra memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("2N (views in the batch)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--small", action="store_true", help="only 2N <= 4096 (quick)")
    ap.add_argument("--target", action="store_true", help="CPU 2N=32768 d=128, torch vs materialised")
    ap.add_argument("--sizes", type=int, nargs="*", help="2N values (default 1024 .. 65536)")
    ap.add_argument("--dims", type=int, nargs="*", default=[128, 256])
    ap.add_argument("--methods", nargs="*", help="default: materialised reference torch (+ triton on CUDA)")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats after the warm-up call")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per case")
    ap.add_argument("--threads", type=int, default=0, help="torch threads per case (0 = torch default)")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        method, two_n, d, device, repeats, threads = args.worker
        print(json.dumps(run_case(method, int(two_n), int(d), device, int(repeats), int(threads))))
        return

    import torch
    from tqdm import tqdm

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.target:
        device, sizes, dims, methods, tag = "cpu", [32768], [128], ["torch", "materialised"], "target"
    else:
        sizes = args.sizes or ([1024, 2048, 4096] if args.small else [1024, 2048, 4096, 8192, 16384, 32768, 65536])
        dims = args.dims
        methods = args.methods or (["materialised", "reference", "torch"] + (["triton"] if device == "cuda" else []))
        tag = "small" if args.small else "sweep"
    repeats = args.repeats if args.repeats is not None else (1 if args.target else 3)

    rows = []
    cases = [(m, s, d) for d in dims for s in sizes for m in methods]
    for method, two_n, d in tqdm(cases, desc="info_nce cases", unit="case"):
        need = MATERIALISED_BYTES_PER_ENTRY.get(method, 0) * two_n**2
        if device == "cpu" and need > 0.7 * _mem_available():
            rows.append({"method": method, "two_n": two_n, "d": d, "device": device,
                         "skipped": f"needs ~{need / 2**30:.0f} GiB, more than 70% of available RAM"})
            continue
        rows.append(_spawn(method, two_n, d, device, repeats, args.threads, args.timeout))

    md = table(rows)
    threads = rows[0].get("threads", "?") if rows else "?"
    note = (f"device={device}, torch {torch.__version__}, {os.cpu_count()} CPUs, {threads} torch threads (load average "
            f"{os.getloadavg()[0]:.1f} at the end: the machine is shared, so times are noisy). Memory: "
            + ("CUDA max_memory_allocated above the inputs" if device == "cuda" else
               "peak extra RSS of the first fwd+bwd in a fresh process (VmHWM reset via /proc/self/clear_refs)"))
    print(md)
    print(note)
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = f"info_nce_{device.split(':')[0]}_{tag}"
    summary = {"note": note, "rows": rows}
    if args.target:
        summary["target"] = _target_summary(rows, repeats, args.threads, args.timeout)
        md = table(rows)
        print(json.dumps(summary["target"], indent=2))
    (RESULTS / f"{stem}.json").write_text(json.dumps(summary, indent=2))
    (RESULTS / f"{stem}.md").write_text(md + "\n\n" + note + "\n")
    if not args.target:
        plot(rows, RESULTS / f"{stem}.png")
    print(f"wrote {RESULTS / stem}.json/.md" + ("" if args.target else "/.png"))


if __name__ == "__main__":
    main()
