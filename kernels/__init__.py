"""Fused ops for contrastive learning and adversarial attacks (torch + triton only; never imports vidcsl).

    from kernels import info_nce, cross_info_nce, pgd_step

Every op has a materialised reference (``kernels.reference``, the specification), a tiled PyTorch
path (CPU) and a Triton path (CUDA, or CPU under ``TRITON_INTERPRET=1``); one dispatch rule
(``kernels.backends``, ``backend="auto"``) picks for every op. Design, dtype policy and memory
contract: ``docs/kernels.md``.
"""

from kernels.distributed import all_gather_with_grad
from kernels.info_nce import cross_info_nce, info_nce
from kernels.pgd import pgd_step

__all__ = ["info_nce", "cross_info_nce", "pgd_step", "all_gather_with_grad"]
