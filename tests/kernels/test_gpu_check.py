"""The GPU check and its roofline model, checked on CPU: the model's counts by hand for one shape, and the
whole check script in its dry-run mode (every section, report writing, torchrun plumbing with gloo)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from benchmarks import roofline  # noqa: E402


def test_roofline_counts_by_hand():
    """2N = 8192 rows against themselves, d = 256, bf16 operands, tiles (128 rows, 32 keys, dK chunk 256)."""
    R = C = 8192
    d = 256
    fwd, bwd = roofline.fused_work(R, C, d, tiles=(128, 32, 256))
    s = 2 * 8192 * 8192 * 256  # one S = A K^T: 34,359,738,368 FLOP
    assert fwd.flops == s == 34_359_738_368
    assert bwd.flops == 3 * s  # S recomputed once (one dK chunk), dK, dA
    assert fwd.exps == bwd.exps == 8192 * 8192
    operands = (8192 + 8192) * 256 * 2  # 8,388,608 bytes of bf16 rows, each read once
    assert fwd.hbm_bytes == operands + 8192 * (4 + 4 + 16)  # + loss, lse, 4 stats in fp32 = 8,585,216
    assert bwd.hbm_bytes == operands + 8192 * 12 + 2 * 8192 * 256 * 4 + 8192 * 256 * 4  # lse/npos/g, dA, dK
    assert fwd.l2_bytes == 8192 * 256 * 2 + 64 * 8192 * 256 * 2  # anchors once + keys per 128-row block
    h100 = roofline.GPUS["H100"]
    assert fwd.bound_s(h100) == pytest.approx(s / 989.4e12)  # tensor-bound: 34.7 us
    assert fwd.limiter(h100) == "tensor"
    assert h100.exp_per_s == pytest.approx(132 * 16 * 1.83e9)
    # with d = 1024 and dK chunks of 256, the backward recomputes S four times
    assert roofline.fused_work(R, C, 1024, tiles=(128, 64, 256))[1].flops == (4 + 2) * 2 * 8192 * 8192 * 1024
    mat = roofline.materialised_work(8192, 256)
    assert mat.flops == 3 * s and mat.hbm_bytes == 12 * 8192**2 + 3 * 8192 * 256 * 2
    assert mat.limiter(h100) == "hbm"


def test_roofline_table_prints_measured_fractions(tmp_path):
    rows, md = roofline.table([(8192, 256)], measured={(8192, 256, "fused fwd+bwd"): {"ms": 1.0, "gpu": "H100"}})
    both = next(r for r in rows if r["kernel"] == "fused fwd+bwd")
    assert both["fraction_of_roofline"] == pytest.approx(both["bound_ms_H100"] / 1.0)
    assert "| 8192 | 256 | fused fwd+bwd |" in md and "(H100)" in md


@pytest.mark.slow
def test_gpu_check_dry_run_writes_every_section(tmp_path):
    """``gpu_check.sh --dry-run``: the whole script on CPU with tiny sizes (no CUDA graph / NCCL / Triton);
    every section produces rows without errors, and the JSON + Markdown report is written."""
    out = tmp_path / "gc"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--dry-run", "--out", str(out)],
                          cwd=ROOT, env={**env, "PYTHON": sys.executable}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["meta"]["dry_run"] is True
    for section in ("agreement", "loss", "fn_modes", "pgd", "train", "roofline", "targets"):
        assert result.get(section), section
        errors = [r for r in result[section] if isinstance(r, dict) and r.get("error")]
        assert not errors, (section, errors)
    assert all(r["ok"] for r in result["agreement"] if "ok" in r)
    assert {r["method"] for r in result["loss"]} >= {"fused_bf16", "fused_fp32_ieee", "materialised_bf16",
                                                     "materialised_bf16_compiled"}
    assert result["train"][0]["clips_per_s"] > 0
    md = out.with_suffix(".md").read_text()
    assert "DRY RUN" in md and "## 6. Roofline" in md and "## 7. Targets" in md
