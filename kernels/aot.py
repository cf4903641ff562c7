"""Ahead-of-time compile of the InfoNCE kernels for a GPU target, without a GPU: what ptxas reports.

Each kernel is compiled by Triton for ``sm_<cc>`` exactly as a launch with the given config and flags
would specialise it (same constexprs, TMA descriptor block shapes, 16-aligned pointers), then assembled
by Triton's bundled ``ptxas``. Reported per kernel: registers per thread, spill bytes, shared memory,
the tensor-core instructions in the PTX (``wgmma`` on Hopper, ``mma`` before), TMA loads and the MMA
layout's warp arrangement (``warpsPerCTA = [w, 1]``: every row of a tile lives in one warp, so row
reductions need no shared-memory round trip).

    python -m kernels.aot                       # report of every candidate config, bf16 + fp32, d in {128, 256, 1024}
    python -m kernels.aot --out benchmarks/results/aot_sm90a   # also writes .json and .md

Must run in a process where ``TRITON_INTERPRET`` is unset (the tests spawn one).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

KERNELS = ("forward", "backward", "backward_anchors", "backward_keys")
_TRITON_DTYPE = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
_POINTER_TYPES = {"self_ptr": "*i64", "pos_ptr": "*i64", "la_ptr": "*i32", "lk_ptr": "*i32", "sla_ptr": "*i32",
                  "slk_ptr": "*i32"}  # everything else: *fp32
_INT_SCALARS = ("R", "C", "D", "TILES_PER_SPLIT")
# the heaviest flag set of each kernel (labels, threshold, attract, and for the forward top-16 + stats)
FULL_FLAGS = dict(has_labels=True, has_cut=True, attract=True, topk=16, stats=True, has_stat=True)
PLAIN_FLAGS = dict(has_labels=False, has_cut=False, attract=False, topk=0, stats=False, has_stat=False)


def _ptxas() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def available() -> bool:
    """True when this triton wheel ships ptxas (then no GPU or CUDA toolkit is needed)."""
    return _ptxas().exists()


def compile_kernel(kernel: str, cfg, precision: str, flags: dict, cc: int = 90) -> dict:
    """Compile one of ``KERNELS`` ("forward", "backward" = the default, atomic dA; "backward_anchors" and
    "backward_keys" = the deterministic pair) for ``sm_<cc>`` (``sm_90a`` for 90); ptxas' and the PTX's facts."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    import kernels.info_nce_triton as m

    if m._interpreted():
        raise RuntimeError("kernels.aot needs TRITON_INTERPRET unset (the interpreter compiles nothing)")
    fn = getattr(m, m.KERNELS[kernel][0])
    fwd = kernel == "forward"
    meta = m.kernel_meta(kernel, cfg, has_labels=flags["has_labels"], has_cut=flags["has_cut"],
                         attract=flags["attract"], precision=precision,
                         **(dict(topk=flags["topk"], stats=flags["stats"], has_stat=flags["has_stat"])
                            if fwd else {}))
    opts = dict(num_warps=meta.pop("num_warps"), num_stages=meta.pop("num_stages"))
    dt = _TRITON_DTYPE[m.DOT_DTYPE[precision]]
    blocks = m.descriptor_blocks(cfg)
    sig = {}
    for a in fn.arg_names:
        if a in meta:
            sig[a] = "constexpr"
        elif a in blocks:
            sig[a] = f"tensordesc<{dt}[{blocks[a][0]}, {blocks[a][1]}]>"
        elif a in _INT_SCALARS:
            sig[a] = "i32"
        else:
            sig[a] = _POINTER_TYPES.get(a, "*fp32")
    attrs = {(i,): [["tt.divisibility", 16]] for i, a in enumerate(fn.arg_names)
             if sig[a].startswith("*") or a == "D"}
    k = triton.compile(ASTSource(fn, sig, meta, attrs), target=GPUTarget("cuda", cc, 32), options=opts)
    ptx = k.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    try:
        arch = "sm_90a" if cc == 90 else f"sm_{cc}"
        rep = subprocess.run([str(_ptxas()), "-v", f"--gpu-name={arch}", f.name, "-o", os.devnull],
                             capture_output=True, text=True, check=True).stderr
    finally:
        os.unlink(f.name)
    mma = sorted(set(re.findall(r"\b(wgmma\.mma_async\S*|mma\.sync\S*)", ptx)))
    return {
        "kernel": kernel, "precision": precision, "cc": cc, "config": cfg.__dict__,
        "flags": {key: flags[key] for key in (FULL_FLAGS if fwd else ("has_labels", "has_cut", "attract"))},
        "registers": int(re.search(r"Used (\d+) registers", rep)[1]),
        "spill_stores": int(re.search(r"(\d+) bytes spill stores", rep)[1]),
        "spill_loads": int(re.search(r"(\d+) bytes spill loads", rep)[1]),
        "shared_bytes": int(k.metadata.shared),
        "tensor_core_instructions": [x.rstrip(";,") for x in mma],
        "tma_loads": ptx.count("cp.async.bulk.tensor"),
        "mma_warps": sorted(set(re.findall(r"nvidia_mma<\{[^}]*warpsPerCTA = \[(\d+, \d+)\]", k.asm["ttgir"]))),
    }


def report(jobs: list[tuple]) -> list[dict]:
    """Compile ``(kernel, cfg, precision, flags, d)`` jobs; failures are recorded, not raised."""
    out = []
    for kernel, cfg, precision, flags, d in jobs:
        try:
            row = compile_kernel(kernel, cfg, precision, flags)
        except Exception as exc:  # a config that does not compile is a result too
            row = {"kernel": kernel, "precision": precision, "config": cfg.__dict__, "error": f"{type(exc).__name__}: "
                   f"{str(exc).splitlines()[0] if str(exc) else ''}"}
        row["d"] = d
        out.append(row)
    return out


def default_jobs(dims=(128, 256, 1024), precisions=("bf16", "fp32-ieee"), all_configs=True) -> list[tuple]:
    """Every kernel x (all candidate configs or the default one) x d x precision, heaviest flags (the
    forward also without any detector)."""
    import kernels.info_nce_triton as m

    jobs = []
    for prec in precisions:
        precision = "ieee" if prec == "fp32-ieee" else prec
        for d in dims:
            cands = m.candidate_configs(d, precision)
            for cfg in cands if all_configs else cands[:1]:
                for kernel in KERNELS:
                    jobs.append((kernel, cfg, precision, FULL_FLAGS, d))
                    if kernel == "forward":
                        jobs.append((kernel, cfg, precision, PLAIN_FLAGS, d))
    return jobs


def markdown(rows: list[dict]) -> str:
    lines = ["| kernel | precision | d | tile (m x n, d-chunk, warps, stages) | flags | regs | spills | shared KiB "
             "| tensor-core instructions | TMA | mma warps |",
             "|---|---|---:|---|---|---:|---:|---:|---|---:|---|"]
    for r in rows:
        c = r["config"]
        tile = (f"{c['block_m']}x{c['block_n']}, {'resident' if c['resident'] else c['block_d']}, {c['num_warps']}w, "
                f"{c['stages_fwd']}/{c['stages_bwd']}")
        if "error" in r:
            lines.append(f"| {r['kernel']} | {r['precision']} | {r['d']} | {tile} | | | | | {r['error']} | | |")
            continue
        f = r["flags"]
        flags = ",".join(k for k, v in f.items() if v and k != "topk") + (f",topk={f['topk']}" if f.get("topk") else "")
        lines.append(f"| {r['kernel']} | {r['precision']} | {r['d']} | {tile} | {flags or 'none'} | {r['registers']} | "
                     f"{r['spill_stores']}/{r['spill_loads']} | {r['shared_bytes'] / 1024:.0f} | "
                     f"{' '.join(r['tensor_core_instructions']) or 'none (FMA)'} | {r['tma_loads']} | "
                     f"{' '.join(r['mma_warps'])} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dims", type=int, nargs="*", default=[128, 256, 1024])
    ap.add_argument("--precisions", nargs="*", default=["bf16", "fp32-ieee"])
    ap.add_argument("--default-only", action="store_true", help="only the first (default) config per shape")
    ap.add_argument("--out", help="write <out>.json and <out>.md")
    ap.add_argument("--jobs-json", help=argparse.SUPPRESS)  # used by the tests: explicit job list
    args = ap.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET") == "1":
        sys.exit("unset TRITON_INTERPRET to compile for a GPU target")
    if not available():
        sys.exit("this triton wheel ships no ptxas: cannot compile for a GPU target offline")
    if args.jobs_json:
        import kernels.info_nce_triton as m

        jobs = [(k, m.candidate_configs(d, p)[i], p, flags, d) for k, i, p, flags, d in json.loads(args.jobs_json)]
        print(json.dumps(report(jobs)))
        return
    from tqdm import tqdm

    jobs = default_jobs(tuple(args.dims), tuple(args.precisions), not args.default_only)
    rows = [report([j])[0] for j in tqdm(jobs, desc="compiling for sm_90a", unit="kernel")]
    md = markdown(rows)
    print(md)
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(rows, indent=2))
        out.with_suffix(".md").write_text(
            "Ahead-of-time compile of the InfoNCE kernels for sm_90a (H100/H200) with Triton's bundled ptxas; "
            "no GPU involved.\nProduced by `python -m kernels.aot --out benchmarks/results/aot_sm90a`.\n\n" + md + "\n")


if __name__ == "__main__":
    main()
