"""One GPU check of the fused kernels: correctness, speed, memory and the roofline, in at most ~5 minutes.

Run it through ``benchmarks/gpu_check.sh`` on one H100 / H200 (it finds the repository's venv). Sections,
each measurement guarded so that one failure or out-of-memory is recorded as a result and the rest runs:

1. agreement at 2N = 8192, d = 256: loss and gradients of the fused loss (bf16 operands, tf32, ieee; every
   false-negative mode) against an fp64 materialised reference, on the same rounded operands and on the
   exact rows; the atomic and deterministic backward agree; the loss (forward + backward) is captured in a
   CUDA graph and replayed;
2. loss speed and memory: forward and forward+backward time (CUDA events, ``triton.testing.do_bench``
   median) and peak memory of the fused loss (bf16 inputs; fp32 inputs with exact "ieee" dots) against a
   materialised bf16 NT-Xent (eager and ``torch.compile``) and lightly's NTXentLoss if installed, at
   2N in {8k, 32k, 64k} with d = 256, d = 1024 at 32k, 2N = 128k for the fused loss only (a materialised
   out-of-memory is a result);
3. every false-negative mode at 2N = 64k (fused, bf16);
4. the fused PGD step against ``torch.compile`` of the same torchattacks expression (image and clip batches,
   L-inf and L2) and the eager expression;
5. one bf16 training step of SimCLR on R3D-18 under torchrun (1 rank, NCCL), in clips/s;
6. the roofline model (``benchmarks/roofline.py``) beside the measured times, and the issue's targets.

Writes ``benchmarks/results/gpu_check.json`` and ``.md`` after every section (so a cut-off run still leaves
its results) and prints progress. ``--dry-run`` runs every section on CPU with tiny sizes and CPU timers
(no CUDA graph, NCCL or Triton): it checks the script itself, and its figures mean nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RESULTS = ROOT / "benchmarks" / "results"
TEMPERATURE = 0.1

FULL = dict(check_n=8192, sizes=(8192, 32768, 65536), big=131072, dim=256, wide_dim=1024, wide_at=32768,
            fn_at=65536, pgd={"image": (256, 3, 32, 32), "clip": (32, 3, 16, 112, 112)},
            train=dict(batch=16, frames=16, size=112, steps=8, encoder="r3d_18"))
DRY = dict(check_n=128, sizes=(64, 128), big=256, dim=32, wide_dim=64, wide_at=128, fn_at=128,
           pgd={"image": (4, 3, 8, 8), "clip": (2, 3, 4, 8, 8)},
           train=dict(batch=2, frames=4, size=16, steps=1, encoder="small_cnn3d"))


def log(msg: str) -> None:
    print(f"[gpu_check {time.strftime('%H:%M:%S')}] {msg}", flush=True)


class Budget:
    """Wall-clock budget: sections ask before starting work and are skipped (recorded) once it is spent."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def allows(self, need: float) -> bool:
        return self.left() >= need


def guarded(rows: list, base: dict, fn, *args, **kwargs) -> dict:
    """Run one measurement; an exception (OOM included) becomes the row's ``error`` instead of stopping."""
    import torch

    row = dict(base)
    try:
        row.update(fn(*args, **kwargs))
    except torch.cuda.OutOfMemoryError:
        row["error"] = "out of memory"
    except Exception as exc:  # noqa: BLE001 - every failure is a result here
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"[:300]
        row["traceback"] = traceback.format_exc()[-1500:]
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rows.append(row)
    status = row.get("error") or ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                           for k, v in row.items() if k not in base and k != "traceback")
    log(f"  {base}: {status}")
    return row


# ------------------------------------------------------------------------------------------------ timing
class Timer:
    """CUDA: ``triton.testing.do_bench`` (CUDA events, L2 flushed, median). Dry run: perf_counter median."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def ms(self, fn, grad_to_none=None) -> float:
        if self.cuda:
            import triton

            return float(triton.testing.do_bench(fn, warmup=5, rep=40, grad_to_none=grad_to_none,
                                                 return_mode="median"))
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
        return sorted(times)[1]

    def peak_bytes(self, fn) -> int | None:
        """Peak extra device memory of one call (CUDA allocator); None on CPU."""
        if not self.cuda:
            fn()
            return None
        import torch

        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return int(torch.cuda.max_memory_allocated() - base)


# ------------------------------------------------------------------------------------------------ losses
def loss_methods(cuda: bool) -> dict:
    """name -> (loss(z1, z2), input dtype). The compiled materialised loss compiles once for every size."""
    import torch

    from benchmarks.bench_info_nce import materialised_nt_xent
    from kernels.info_nce import info_nce

    backend = "auto" if cuda else "torch"
    methods = {
        "fused_bf16": (lambda a, b: info_nce(a, b, TEMPERATURE, backend=backend), torch.bfloat16),
        "fused_fp32_ieee": (lambda a, b: info_nce(a, b, TEMPERATURE, backend=backend, precision="ieee"),
                            torch.float32),
        "materialised_bf16": (lambda a, b: materialised_nt_xent(a, b, TEMPERATURE), torch.bfloat16),
        "materialised_bf16_compiled": (torch.compile(lambda a, b: materialised_nt_xent(a, b, TEMPERATURE),
                                                     dynamic=True, backend="inductor" if cuda else "eager"),
                                       torch.bfloat16),
    }
    try:
        from lightly.loss import NTXentLoss

        methods["lightly_ntxent_bf16"] = (NTXentLoss(temperature=TEMPERATURE), torch.bfloat16)
    except ImportError:
        pass
    return methods


def time_loss(fn, dtype, two_n: int, d: int, device, timer: Timer) -> dict:
    import torch

    gen = torch.Generator(device=device).manual_seed(0)
    z1 = torch.randn(two_n // 2, d, device=device, dtype=dtype, generator=gen).requires_grad_()
    z2 = torch.randn(two_n // 2, d, device=device, dtype=dtype, generator=gen).requires_grad_()

    def fwd():
        with torch.no_grad():
            return fn(z1, z2)

    def fwd_bwd():
        fn(z1, z2).backward()

    fwd_bwd()  # compile / tune outside the measurement
    out = {"peak_mem_mb": None}
    peak = timer.peak_bytes(fwd_bwd)
    if peak is not None:
        out["peak_mem_mb"] = peak / 2**20
        out["peak_bytes_per_row_dim"] = peak / (two_n * d)
    out["fwd_ms"] = timer.ms(fwd)
    out["fwd+bwd_ms"] = timer.ms(fwd_bwd, grad_to_none=[z1, z2])
    return out


# ------------------------------------------------------------------------------------------------ 1. agreement
def fp64_reference(z1, z2, operand=None, **kw):
    """Loss and gradients (w.r.t. the raw rows) of the materialised specification in fp64. ``operand`` maps
    the rows to the values the fused dots multiply (normalised in fp32, then rounded); the rounding is passed
    straight through in the gradient, as the fused path does. None: exact fp64 throughout."""
    import torch.nn.functional as F

    from kernels.reference import info_nce_reference

    a, b = z1.detach().double().requires_grad_(), z2.detach().double().requires_grad_()
    na, nb = F.normalize(a, dim=1), F.normalize(b, dim=1)
    if operand is not None:
        na = na + (operand(z1).double() - na).detach()
        nb = nb + (operand(z2).double() - nb).detach()
    loss = info_nce_reference(na, nb, TEMPERATURE, normalize=False, **kw)[0]
    loss.backward()
    return loss.detach(), a.grad, b.grad


def agreement(n2: int, d: int, device, cuda: bool) -> list[dict]:
    """Errors of each fused configuration vs fp64: on the same operands (the kernels' own error, fp32
    accumulation and bf16 softmax weights in the backward) and vs the exact rows (adds the operand rounding)."""
    import torch
    import torch.nn.functional as F

    from kernels.info_nce import info_nce
    from kernels.info_nce_torch import dot_operand

    gen = torch.Generator(device=device).manual_seed(1)
    z1 = torch.randn(n2 // 2, d, device=device, generator=gen)
    z2 = torch.randn(n2 // 2, d, device=device, generator=gen)
    labels = torch.randint(0, 50, (n2 // 2,), device=device, generator=gen)
    backend = "auto" if cuda else "torch"
    modes = {"plain": {}, "labels": {"labels": labels}, "labels_attract": {"labels": labels, "fn_mode": "attract"},
             "threshold": {"fn_threshold": 0.2}, "topk5": {"fn_topk": 5},
             "topk16_threshold_attract": {"fn_topk": 16, "fn_threshold": 0.05, "fn_mode": "attract"}}
    # relative limits vs fp64 on the same operands: fp32 accumulation; in the backward the softmax weights pass
    # through the operand dtype. TF32: the reference rounds to nearest, the hardware may truncate (looser).
    loss_limit = {"bf16": 1e-4, "tf32": 2e-3, "ieee": 1e-5}
    grad_limit = {"bf16": 2e-2, "tf32": 1e-2, "ieee": 1e-5}
    rows = []
    for precision in ("bf16", "tf32", "ieee") if cuda else ("bf16", "ieee"):
        for mode, kw in modes.items():
            if precision != "bf16" and mode not in ("plain", "topk5"):
                continue

            def one(precision=precision, kw=kw):
                a, b = z1.clone().requires_grad_(), z2.clone().requires_grad_()
                loss = info_nce(a, b, TEMPERATURE, backend=backend, precision=precision, **kw)
                loss.backward()
                out = {}
                operand = lambda t: dot_operand(F.normalize(t.float(), dim=1), precision, torch.float32)  # noqa: E731
                for name, op in (("same_operands", operand), ("exact", None)):
                    ref, ga, gb = fp64_reference(z1, z2, op, **kw)
                    scale = float(max(ga.abs().max(), gb.abs().max()))
                    out[f"loss_rel_err_{name}"] = float((loss.double() - ref).abs() / ref.abs())
                    out[f"grad_rel_err_{name}"] = float(max((a.grad.double() - ga).abs().max(),
                                                            (b.grad.double() - gb).abs().max())) / scale
                out["ok"] = (out["loss_rel_err_same_operands"] < loss_limit[precision]
                             and out["grad_rel_err_same_operands"] < grad_limit[precision])
                return out

            guarded(rows, {"precision": precision, "mode": mode, "two_n": n2, "d": d}, one)
    rows.extend(determinism_and_graph(z1, z2, labels, device, cuda))
    return rows


def determinism_and_graph(z1, z2, labels, device, cuda: bool) -> list[dict]:
    import torch

    from kernels.info_nce import info_nce

    backend = "auto" if cuda else "torch"
    rows = []

    def grads(deterministic):
        a, b = z1.bfloat16().requires_grad_(), z2.bfloat16().requires_grad_()
        info_nce(a, b, TEMPERATURE, labels=labels, fn_topk=5, backend=backend, deterministic=deterministic).backward()
        return a.grad.float(), b.grad.float()

    def compare():
        d1, d2 = grads(True), grads(True)
        f1 = grads(False)
        return {"deterministic_bitwise_repeat": all(torch.equal(x, y) for x, y in zip(d1, d2)),
                "atomic_vs_deterministic_max_diff": float(max((x - y).abs().max() for x, y in zip(d1, f1)))}

    guarded(rows, {"check": "deterministic backward"}, compare)
    if cuda:
        guarded(rows, {"check": "CUDA graph capture of fwd+bwd"}, cuda_graph_replay, z1, z2, labels)
    return rows


def cuda_graph_replay(z1, z2, labels) -> dict:
    import torch

    from kernels.info_nce import info_nce

    a, b = z1.bfloat16().requires_grad_(), z2.bfloat16().requires_grad_()

    def step():
        loss, stats = info_nce(a, b, TEMPERATURE, labels=labels, fn_topk=5, fn_mode="attract", return_stats=True,
                               stat_labels=labels)
        return (loss, stats["fn_found"], *torch.autograd.grad(loss, (a, b)))

    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    with torch.no_grad():
        a.copy_(torch.randn_like(a))
        b.copy_(torch.randn_like(b))
    graph.replay()
    eager = step()
    diff = max(float((x.float() - y.float()).abs().max()) for x, y in zip(captured, eager))
    return {"captured": True, "replay_vs_eager_max_diff": diff, "ok": diff < 1e-2}


# ------------------------------------------------------------------------------------------------ 3. FN modes
def fn_modes(two_n: int, d: int, device, timer: Timer, cuda: bool) -> list[dict]:
    import torch

    from kernels.info_nce import info_nce

    backend = "auto" if cuda else "torch"
    labels = torch.randint(0, 1000, (two_n // 2,), device=device)
    modes = {"none": {}, "oracle_eliminate": {"labels": labels}, "oracle_attract": {"labels": labels, "fn_mode": "attract"},
             "threshold_0.5": {"fn_threshold": 0.5}, "topk_5": {"fn_topk": 5}, "topk_16": {"fn_topk": 16},
             "threshold+topk_attract+stats": {"fn_threshold": 0.3, "fn_topk": 5, "fn_mode": "attract",
                                              "return_stats": True, "stat_labels": labels}}
    rows = []
    for mode, kw in modes.items():
        def run(kw=kw):
            def loss(a, b):
                out = info_nce(a, b, TEMPERATURE, backend=backend, **kw)
                return out[0] if isinstance(out, tuple) else out
            return time_loss(loss, torch.bfloat16, two_n, d, device, timer)
        guarded(rows, {"mode": mode, "two_n": two_n, "d": d}, run)
    return rows


# ------------------------------------------------------------------------------------------------ 4. PGD
def pgd_case(x, g, x0, norm: str, method: str, compiled, timer: Timer, cuda: bool) -> dict:
    """One PGD step (torchattacks' step sizes of bench_pgd) by ``method``: time, compulsory bandwidth
    (read x, g, x0, write out: 4 fp32 passes) and the difference from the eager expression."""
    import torch

    from benchmarks.bench_pgd import STEP, unfused_step
    from kernels.pgd import pgd_step

    a, eps = STEP[norm]
    out = torch.empty_like(x)
    fn = {"fused": lambda: pgd_step(x, g, x0, step_size=a, eps=eps, norm=norm, out=out,
                                    backend="auto" if cuda else "torch"),
          "torch_compile": lambda: compiled(x, g, x0, a, eps, norm),
          "eager": lambda: unfused_step(x, g, x0, a, eps, norm)}[method]
    fn()
    ms = timer.ms(fn)
    diff = float((fn() - unfused_step(x, g, x0, a, eps, norm)).abs().max())
    return {"ms": ms, "gb_per_s_compulsory": 4 * x.numel() * 4 / ms / 1e6, "max_diff_vs_eager": diff}


def pgd_rows(shapes: dict, device, timer: Timer, cuda: bool) -> list[dict]:
    import torch

    from benchmarks.bench_pgd import unfused_step

    compiled = torch.compile(unfused_step, backend="inductor" if cuda else "eager")
    rows = []
    for case, shape in shapes.items():
        gen = torch.Generator(device=device).manual_seed(0)
        x0 = torch.rand(shape, device=device, generator=gen)
        x = (x0 + 0.02 * torch.randn(shape, device=device, generator=gen)).clamp(0, 1)
        g = torch.randn(shape, device=device, generator=gen)
        for norm in ("linf", "l2"):
            for method in ("fused", "torch_compile", "eager"):
                guarded(rows, {"case": case, "norm": norm, "method": method}, pgd_case, x, g, x0, norm, method,
                        compiled, timer, cuda)
    return rows


# ------------------------------------------------------------------------------------------------ 5. training
def train_worker(spec: dict) -> None:
    """One rank of ``torchrun``: SimCLR on R3D-18, bf16 autocast, DDP, fused loss over all-gathered rows."""
    import torch
    import torch.distributed as dist

    from vidcsl.config import load_config
    from vidcsl.methods.base import StepContext, build_method
    from vidcsl.models.registry import build_encoder
    from vidcsl.train.distributed import gather_nograd, gather_with_grad

    cuda = spec["device"] == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)
    cfg = load_config(None, ["method.name=simclr", f"method.loss_backend={'auto' if cuda else 'torch'}"])
    torch.manual_seed(0)
    method = build_method(cfg, build_encoder(spec["encoder"]), 10).to(dev)
    model = torch.nn.parallel.DistributedDataParallel(method, device_ids=[dev.index] if cuda else None)
    opt = torch.optim.SGD(method.parameters_to_optimize(), lr=0.01, momentum=0.9)
    b, t, s = spec["batch"], spec["frames"], spec["size"]
    x1, x2 = (torch.rand(b, 3, t, s, s, device=dev) for _ in range(2))
    batch = ((x1, x2), torch.randint(0, 10, (b,), device=dev))
    ctx = StepContext(rank=rank, world_size=dist.get_world_size(), gather=gather_with_grad, gather_nograd=gather_nograd)

    def step():
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            loss, _ = model(batch, ctx)
        opt.zero_grad(set_to_none=True)
        loss.float().backward()
        opt.step()

    for _ in range(2):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(spec["steps"]):
        step()
    if cuda:
        torch.cuda.synchronize()
    sec = time.perf_counter() - t0
    if rank == 0:
        print(json.dumps({"clips_per_s": b * spec["steps"] / sec, "ms_per_step": 1e3 * sec / spec["steps"],
                          "batch": b, "clip": [3, t, s, s], "peak_mem_mb":
                          torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
                          "backend": "nccl" if cuda else "gloo"}))
    dist.destroy_process_group()


def train_step(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1", __file__,
           "--train-worker", json.dumps(spec)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode != 0:
        raise RuntimeError(f"torchrun exited {proc.returncode}: {proc.stderr.strip()[-400:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------------------------------------ report
def targets(result: dict) -> list[dict]:
    """The issue's targets, judged from the measured rows (None where a figure is missing)."""
    loss = [r for r in result.get("loss", []) if "error" not in r]
    by = {(r["method"], r["two_n"], r["d"]): r for r in loss}
    out = []
    for (method, two_n, d), r in sorted(by.items()):
        if method != "fused_bf16":
            continue
        eager = by.get(("materialised_bf16", two_n, d))
        out.append({"target": f"fused >= materialised eager speed, 2N={two_n} d={d}",
                    "met": None if eager is None else r["fwd+bwd_ms"] <= eager["fwd+bwd_ms"],
                    "detail": None if eager is None else f"{r['fwd+bwd_ms']:.3f} vs {eager['fwd+bwd_ms']:.3f} ms"})
    for r in result.get("roofline", []):
        if r["kernel"] == "fused fwd+bwd" and r["two_n"] >= 32768 and "fraction_of_roofline" in r:
            out.append({"target": f">= 50% of the bf16 roofline, 2N={r['two_n']} d={r['d']}",
                        "met": r["fraction_of_roofline"] >= 0.5, "detail": f"{100 * r['fraction_of_roofline']:.0f}%"})
    per = [(r["two_n"], r["peak_bytes_per_row_dim"]) for r in loss
           if r["method"] == "fused_bf16" and r.get("peak_bytes_per_row_dim") and r["d"] == 256]
    if len(per) >= 2:
        lo, hi = min(p for _, p in per), max(p for _, p in per)
        out.append({"target": "fused peak memory O(N d): bytes per (2N x d) constant over 2N",
                    "met": hi <= 1.5 * lo, "detail": ", ".join(f"2N={n}: {p:.1f} B" for n, p in sorted(per))})
    return out


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "NO"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _md_table(rows: list[dict], keys: list[str]) -> str:
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(k)) if k != "error" else (r.get("error") or "") for k in keys) + " |")
    return "\n".join(lines)


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2, default=str))
    m = result["meta"]
    parts = [f"# GPU check{' (DRY RUN on CPU: figures mean nothing)' if m['dry_run'] else ''}", "",
             f"{m['gpu']}; torch {m['torch']}, triton {m['triton']}; {m['date']}; wall {m.get('wall_s', 0):.0f} s. "
             f"Produced by `benchmarks/gpu_check.sh`.", ""]
    sections = [("1. Agreement with an fp64 reference", "agreement",
                 ["precision", "mode", "check", "loss_rel_err_same_operands", "grad_rel_err_same_operands",
                  "loss_rel_err_exact", "grad_rel_err_exact",
                  "deterministic_bitwise_repeat", "atomic_vs_deterministic_max_diff", "replay_vs_eager_max_diff", "ok",
                  "error"]),
                ("2. Loss: time (ms, median) and peak memory", "loss",
                 ["method", "two_n", "d", "fwd_ms", "fwd+bwd_ms", "peak_mem_mb", "peak_bytes_per_row_dim", "error"]),
                ("3. False-negative modes (fused, bf16)", "fn_modes",
                 ["mode", "two_n", "d", "fwd_ms", "fwd+bwd_ms", "peak_mem_mb", "error"]),
                ("4. PGD step", "pgd", ["case", "norm", "method", "ms", "gb_per_s_compulsory", "max_diff_vs_eager",
                                        "error"]),
                ("5. Training step (SimCLR, R3D-18, bf16, torchrun 1 rank)", "train",
                 ["encoder", "clips_per_s", "ms_per_step", "batch", "peak_mem_mb", "backend", "error"]),
                ("7. Targets", "targets", ["target", "met", "detail"])]
    for title, key, cols in sections:
        if key in result:
            parts += [f"## {title}", "", _md_table(result[key], cols), ""]
    if "roofline_md" in result:
        parts += ["## 6. Roofline beside the measured times (bounds from benchmarks/roofline.py)", "",
                  result["roofline_md"], ""]
    out.with_suffix(".md").write_text("\n".join(parts))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU, tiny sizes: check the script, not the GPU")
    ap.add_argument("--budget", type=float, default=290.0, help="seconds for the whole check")
    ap.add_argument("--out", type=Path, default=None, help="output stem (default benchmarks/results/gpu_check)")
    ap.add_argument("--only", nargs="*", help="run only these sections (agreement loss fn_modes pgd train)")
    ap.add_argument("--train-worker", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.train_worker:
        train_worker(json.loads(args.train_worker))
        return

    import torch
    import triton

    start = time.monotonic()
    cuda = not args.dry_run
    if cuda and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (use --dry-run to check the script on CPU)")
    if os.environ.get("TRITON_INTERPRET") == "1" and cuda:
        sys.exit("gpu_check: unset TRITON_INTERPRET")
    p = DRY if args.dry_run else FULL
    if args.dry_run:
        torch.set_num_threads(1)  # tiny tensors: threads only add overhead (and the CPU may be shared)
    device = torch.device("cuda" if cuda else "cpu")
    timer = Timer(cuda)
    budget = Budget(args.budget)
    out = args.out or RESULTS / ("gpu_check_dry_run" if args.dry_run else "gpu_check")
    only = set(args.only or ["agreement", "loss", "fn_modes", "pgd", "train"])
    result = {"meta": {"gpu": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or 'dry run'})",
                       "capability": list(torch.cuda.get_device_capability()) if cuda else None,
                       "torch": torch.__version__, "triton": triton.__version__, "dry_run": args.dry_run,
                       "date": time.strftime("%Y-%m-%d %H:%M:%S"), "params": {k: str(v) for k, v in p.items()}}}

    def save():
        result["meta"]["wall_s"] = time.monotonic() - start
        write(result, out)

    if "agreement" in only:
        log(f"1/6 agreement at 2N={p['check_n']}, d={p['dim']}")
        result["agreement"] = agreement(p["check_n"], p["dim"], device, cuda)
        save()

    if "loss" in only:
        log("2/6 loss speed and memory")
        methods = loss_methods(cuda)
        cases = [(m, n, p["dim"]) for n in p["sizes"] for m in methods]
        cases += [(m, p["wide_at"], p["wide_dim"]) for m in methods]
        cases += [(m, p["big"], p["dim"]) for m in ("fused_bf16", "fused_fp32_ieee")]
        result["loss"] = []
        for name, two_n, d in cases:
            base = {"method": name, "two_n": two_n, "d": d}
            if not budget.allows(120):  # keep time for the other sections
                result["loss"].append({**base, "error": "skipped: time budget"})
                continue
            fn, dtype = methods[name]
            guarded(result["loss"], base, time_loss, fn, dtype, two_n, d, device, timer)
        save()

    if "fn_modes" in only:
        log(f"3/6 false-negative modes at 2N={p['fn_at']}")
        result["fn_modes"] = fn_modes(p["fn_at"], p["dim"], device, timer, cuda) if budget.allows(60) else \
            [{"mode": "all", "error": "skipped: time budget"}]
        save()

    if "pgd" in only:
        log("4/6 PGD step")
        result["pgd"] = pgd_rows(p["pgd"], device, timer, cuda) if budget.allows(30) else \
            [{"case": "all", "error": "skipped: time budget"}]
        save()

    if "train" in only:
        log("5/6 training step under torchrun")
        spec = {**p["train"], "device": "cuda" if cuda else "cpu"}
        result["train"] = []
        guarded(result["train"], {"encoder": spec["encoder"]}, train_step, spec, max(30.0, budget.left()))
        save()

    log("6/6 roofline and targets")
    try:
        from benchmarks.roofline import load_measured, table

        save()
        pairs = sorted({(r["two_n"], r["d"]) for r in result.get("loss", [])}) or [(n, p["dim"]) for n in p["sizes"]]
        result["roofline"], result["roofline_md"] = table(pairs, measured=load_measured(out.with_suffix(".json")))
    except Exception as exc:  # noqa: BLE001
        result["roofline_error"] = f"{type(exc).__name__}: {exc}"
    result["targets"] = targets(result)
    save()
    log(f"done in {time.monotonic() - start:.0f} s: {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
