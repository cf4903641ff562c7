"""The reference (fp32 accumulation) against formulas written independently of it, and the losses inside autocast.

Every fused path is tested against ``kernels.reference``; these tests check the reference itself
(NT-Xent as cross-entropy over masked logits, SupCon written out per anchor), so a spec error
cannot hide behind agreeing implementations.
"""

import pytest
import torch
import torch.nn.functional as F

from kernels.info_nce import info_nce
from kernels.reference import cross_info_nce_reference, info_nce_reference


def _nt_xent_cross_entropy(z1, z2, t):
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    n = z1.shape[0]
    logits = (z @ z.t() / t).fill_diagonal_(float("-inf"))
    target = (torch.arange(2 * n) + n) % (2 * n)
    return F.cross_entropy(logits, target)


def _supcon_by_hand(z1, z2, labels, t):
    """Khosla et al.'s L_out, one anchor at a time."""
    z = F.normalize(torch.cat([z1, z2]).double(), dim=1)
    lab = torch.cat([labels, labels])
    total = 0.0
    for i in range(z.shape[0]):
        others = [j for j in range(z.shape[0]) if j != i]
        log_den = torch.logsumexp(torch.stack([z[i] @ z[j] / t for j in others]), 0)
        pos = [j for j in others if lab[j] == lab[i]]
        total = total + sum(log_den - z[i] @ z[j] / t for j in pos) / len(pos)
    return total / z.shape[0]


def test_reference_nt_xent_is_cross_entropy_over_masked_logits():
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(7, 5, generator=g), torch.randn(7, 5, generator=g)
    for t in (0.05, 0.5, 2.0):
        expected = _nt_xent_cross_entropy(z1, z2, t)
        got, _ = info_nce_reference(z1.double(), z2.double(), t)
        torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)


def test_reference_attract_with_labels_is_supcon():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g)
    labels = torch.tensor([0, 1, 0, 2, 1, 0])
    got, _ = info_nce_reference(z1.double(), z2.double(), 0.3, labels=labels, fn_mode="attract")
    torch.testing.assert_close(got.double(), _supcon_by_hand(z1, z2, labels, 0.3), rtol=1e-5, atol=1e-6)


def test_reference_eliminate_drops_same_label_columns_only():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(5, 3, generator=g).double(), torch.randn(5, 3, generator=g).double()
    labels = torch.tensor([0, 0, 1, 2, 1])
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    lab = torch.cat([labels, labels])
    n, logits = 5, z @ z.t() / 0.2
    rows = []
    for i in range(2 * n):
        p = (i + n) % (2 * n)
        keep = [j for j in range(2 * n) if j != i and (j == p or lab[j] != lab[i])]
        rows.append(torch.logsumexp(logits[i, keep], 0) - logits[i, p])
    got, _ = info_nce_reference(z1, z2, 0.2, labels=labels)
    torch.testing.assert_close(got.double(), torch.stack(rows).mean(), rtol=1e-5, atol=1e-6)


def test_reference_cross_form_is_cross_entropy():
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(4, 6, generator=g).double(), torch.randn(9, 6, generator=g).double()
    logits = F.normalize(q, dim=1) @ F.normalize(k, dim=1).t() / 0.1
    got, _ = cross_info_nce_reference(q, k, 0.1)
    torch.testing.assert_close(got.double(), F.cross_entropy(logits, torch.arange(4)), rtol=1e-5, atol=1e-6)


def test_losses_ignore_an_enclosing_bf16_autocast():
    """Mixed-precision training must not recast the loss's matmuls (the top-k cut would then disagree)."""
    g = torch.Generator().manual_seed(4)
    z1, z2 = torch.randn(37, 24, generator=g), torch.randn(37, 24, generator=g)
    plain = info_nce(z1, z2, 0.1, fn_topk=2, backend="torch")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = info_nce(z1, z2, 0.1, fn_topk=2, backend="torch")
        reference = info_nce(z1, z2, 0.1, fn_topk=2, backend="reference")
    torch.testing.assert_close(inside, plain)
    torch.testing.assert_close(reference, plain, rtol=1e-5, atol=1e-5)


def _boundary_views():
    """Unit rows: the negative pair (0, 1) has cosine exactly 0.6f whatever the summation order; every
    other pair (positives included, which are never false negatives) is orthogonal."""
    z1, z2 = torch.zeros(4, 9), torch.zeros(4, 9)
    z1[0, 0] = 1.0
    z1[1, 0], z1[1, 1] = 0.6, 0.8
    z1[2, 2], z1[3, 3] = 1.0, 1.0
    z2[torch.arange(4), torch.arange(4) + 4] = 1.0
    return z1, z2


@pytest.mark.parametrize("backend", ["reference", "torch", "triton"])
def test_threshold_is_strict_at_an_exactly_representable_cosine(backend):
    """``cos > t``: a negative at exactly the threshold is not a false negative, one just above is."""
    z1, z2 = _boundary_views()
    assert float(z1[0] @ z1[1]) == float(torch.tensor(0.6))
    for t, expect_row0 in ((0.6, 0.0), (0.5999, 1.0)):
        t32 = float(torch.tensor(t))  # the kernel compares in fp32
        _, stats = info_nce(z1, z2, 0.1, fn_threshold=t32, normalize=False, return_stats=True, backend=backend)
        assert stats["fn_found"].tolist() == [expect_row0, expect_row0] + [0.0] * 6
