"""Roofline model of the fused InfoNCE kernels (and of a materialised loss) on H100 / H200.

For one call with R anchor rows, C keys, embedding size d and 2-byte (bf16) operands, each kernel's work is
counted from its code (``kernels/info_nce_triton.py``; tile shapes from ``candidate_configs``):

* FLOPs: the matmuls only (2 per multiply-add): forward S = A K^T; default backward S again + dK + dA.
  With d larger than one dK chunk (``block_do``), S is recomputed once per chunk.
* exp: one ``exp2`` per S element per pass that forms the softmax (the special-function units, not the
  tensor cores, execute it; at d = 128 they are as busy as the tensor cores).
* HBM bytes: the compulsory traffic (operands read once, outputs written once, fp32 dA / dK buffers), and
  separately the tile stream through L2 (the streamed operand re-read by every row / key block) and, for
  the default backward, the fp32 atomic read-modify-write traffic of dA, which resolves in L2.
* materialised: a plain bf16 NT-Xent (logits = Z Z^T, cross-entropy) reads and writes the (2N)^2 logits a
  few times; ``MATERIALISED_BYTES_PER_LOGIT`` models that (a lower bound: it ignores masking copies).

The bound of a kernel is max(FLOPs / peak, exp / exp rate, HBM bytes / bandwidth); ``fraction`` of a
measured time is bound / measured (1.0 = at the roofline). Peaks are the dense spec-sheet figures:

* H100 SXM5: 989.4 TFLOP/s bf16 dense tensor (1,979 "with sparsity"), 3.35 TB/s HBM3, 132 SMs at the
  1,830 MHz boost clock the peak is quoted at (NVIDIA H100 Tensor Core GPU datasheet, 2023).
* H200 SXM: 989.4 TFLOP/s bf16 dense (same GH100 compute), 4.8 TB/s HBM3e (NVIDIA H200 datasheet, 2024).
* exp rate: 16 results / clock / SM for exp2 on compute capability 9.0 (CUDA C++ Programming Guide,
  "Arithmetic Instructions" throughput table) x 132 SMs x 1.83 GHz = 3.86e12 / s on both.

    python benchmarks/roofline.py                       # the table for 2N in {8k, 32k, 64k, 128k}, d in {128, 256, 1024}
    python benchmarks/roofline.py --measured benchmarks/results/gpu_check.json   # beside measured times
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Gpu:
    name: str
    bf16_tflops: float  # dense tensor-core peak
    hbm_tbps: float
    sms: int
    clock_ghz: float
    exp_per_clock_per_sm: int = 16

    @property
    def exp_per_s(self) -> float:
        return self.sms * self.exp_per_clock_per_sm * self.clock_ghz * 1e9


GPUS = {
    "H100": Gpu("H100 SXM5", bf16_tflops=989.4, hbm_tbps=3.35, sms=132, clock_ghz=1.83),
    "H200": Gpu("H200 SXM", bf16_tflops=989.4, hbm_tbps=4.8, sms=132, clock_ghz=1.83),
}
SIZES = (8192, 32768, 65536, 131072)  # 2N
DIMS = (128, 256, 1024)
MATERIALISED_BYTES_PER_LOGIT = 12  # bf16 logits: write, read + write log-softmax, backward read/write: ~6 passes x 2 B


@dataclass(frozen=True)
class Work:
    """One kernel's work for one call."""

    kernel: str
    flops: float
    exps: float
    hbm_bytes: float  # compulsory traffic
    l2_bytes: float  # tile stream + atomics through L2 (not in the bound; for reading profiles)

    def bound_s(self, gpu: Gpu) -> float:
        return max(self.flops / (gpu.bf16_tflops * 1e12), self.exps / gpu.exp_per_s,
                   self.hbm_bytes / (gpu.hbm_tbps * 1e12))

    def limiter(self, gpu: Gpu) -> str:
        times = {"tensor": self.flops / (gpu.bf16_tflops * 1e12), "exp": self.exps / gpu.exp_per_s,
                 "hbm": self.hbm_bytes / (gpu.hbm_tbps * 1e12)}
        return max(times, key=times.get)


def tile_shape(d: int) -> tuple[int, int, int]:
    """(block_m, block_n, block_do) of the default bf16 config, as ``candidate_configs`` picks it."""
    from kernels.info_nce_triton import candidate_configs

    cfg = candidate_configs(d, "bf16")[0]
    return cfg.block_m, cfg.block_n, cfg.block_do


def fused_work(rows: int, cols: int, d: int, elem: int = 2, tiles: tuple[int, int, int] | None = None) -> list[Work]:
    """Forward and default (atomic) backward of the fused loss: R = ``rows`` anchors against C = ``cols``."""
    R, C = rows, cols
    bm, bn, bdo = tiles or tile_shape(d)
    chunks = -(-d // bdo)  # dK chunks: S recomputed per chunk
    s = 2.0 * R * C * d
    operands = (R + C) * d * elem
    fwd = Work("forward", flops=s, exps=float(R * C),
               hbm_bytes=operands + R * (4 + 4 + 16),  # loss, lse, stats (4 x fp32)
               l2_bytes=R * d * elem + -(-R // bm) * C * d * elem)  # anchors once, keys per row block
    bwd = Work("backward", flops=s * chunks + 2 * s, exps=float(R * C) * chunks,
               hbm_bytes=operands + R * 12 + 2 * R * d * 4 + C * d * 4,  # lse/npos/g; dA zeroed + written; dK
               l2_bytes=C * d * elem + -(-C // bn) * R * d * elem * chunks + -(-C // bn) * R * d * 4 * 2)
    return [fwd, bwd]


def materialised_work(two_n: int, d: int) -> Work:
    """A plain bf16 NT-Xent, forward + backward: 3 matmuls and the (2N)^2 logits through HBM."""
    n2 = float(two_n) * two_n
    return Work("materialised fwd+bwd", flops=3 * 2.0 * n2 * d, exps=2 * n2,
                hbm_bytes=MATERIALISED_BYTES_PER_LOGIT * n2 + 3 * two_n * d * 2, l2_bytes=0.0)


def table(pairs=None, gpus=("H100", "H200"), measured: dict | None = None) -> tuple[list[dict], str]:
    """Rows (one per (2N, d) pair and kernel; default every 2N in SIZES x d in DIMS) with work, bounds and,
    where ``measured`` has a time, the fraction of the roofline reached."""
    rows = []
    for two_n, d in pairs or [(n, d) for n in SIZES for d in DIMS]:
        fwd, bwd = fused_work(two_n, two_n, d)
        both = Work("fused fwd+bwd", fwd.flops + bwd.flops, fwd.exps + bwd.exps, fwd.hbm_bytes + bwd.hbm_bytes,
                    fwd.l2_bytes + bwd.l2_bytes)
        for w in (fwd, bwd, both, materialised_work(two_n, d)):
            row = {"two_n": two_n, "d": d, **asdict(w)}
            for g in gpus:
                row[f"bound_ms_{g}"] = w.bound_s(GPUS[g]) * 1e3
                row[f"limiter_{g}"] = w.limiter(GPUS[g])
            got = (measured or {}).get((two_n, d, w.kernel))
            if got is not None:
                row["measured_ms"] = got["ms"]
                row["measured_on"] = got["gpu"]
                g = "H200" if "H200" in got["gpu"] else "H100"
                row["fraction_of_roofline"] = row[f"bound_ms_{g}"] / got["ms"]
            rows.append(row)
    head = ("| 2N | d | kernel | GFLOP | G exp | HBM MB | L2 MB | bound H100 ms | bound H200 ms | limiter | measured ms "
            "| of roofline |")
    lines = [head, "|" + "---:|" * 2 + "---|" + "---:|" * 6 + "---|---:|---:|"]
    for r in rows:
        meas = f"{r['measured_ms']:.3f} ({r['measured_on']})" if "measured_ms" in r else "-"
        frac = f"{100 * r['fraction_of_roofline']:.0f}%" if "fraction_of_roofline" in r else "-"
        lines.append(f"| {r['two_n']} | {r['d']} | {r['kernel']} | {r['flops'] / 1e9:,.1f} | {r['exps'] / 1e9:.2f} | "
                     f"{r['hbm_bytes'] / 1e6:,.1f} | {r['l2_bytes'] / 1e6:,.0f} | {r['bound_ms_H100']:.3f} | "
                     f"{r['bound_ms_H200']:.3f} | {r['limiter_H100']} | {meas} | {frac} |")
    return rows, "\n".join(lines)


def load_measured(path: Path) -> dict:
    """(2N, d, kernel) -> {ms, gpu} from a gpu_check JSON: bf16 fused forward / fwd+bwd and materialised times."""
    data = json.loads(Path(path).read_text())
    gpu = data.get("meta", {}).get("gpu", "?")
    names = {("fused_bf16", "fwd"): "forward", ("fused_bf16", "fwd+bwd"): "fused fwd+bwd",
             ("materialised_bf16", "fwd+bwd"): "materialised fwd+bwd"}
    out = {}
    for r in data.get("loss", []):
        for pass_ in ("fwd", "fwd+bwd"):
            key = names.get((r.get("method"), pass_))
            ms = r.get(f"{pass_}_ms")
            if key and isinstance(ms, (int, float)):
                out[(r["two_n"], r["d"], key)] = {"ms": ms, "gpu": gpu}
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="*", default=list(SIZES))
    ap.add_argument("--dims", type=int, nargs="*", default=list(DIMS))
    ap.add_argument("--measured", type=Path, help="a gpu_check JSON whose times are printed beside the bounds")
    ap.add_argument("--out", type=Path, help="write the table as <out>.json and <out>.md")
    args = ap.parse_args(argv)
    measured = load_measured(args.measured) if args.measured else None
    rows, md = table([(n, d) for n in args.sizes for d in args.dims], measured=measured)
    print(md)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        consts = {k: {**asdict(g), "exp_per_s": g.exp_per_s} for k, g in GPUS.items()}
        args.out.with_suffix(".json").write_text(json.dumps({"gpus": consts, "rows": rows}, indent=2))
        args.out.with_suffix(".md").write_text(md + "\n")


if __name__ == "__main__":
    import sys

    sys.path.insert(0, str(ROOT))
    main()
