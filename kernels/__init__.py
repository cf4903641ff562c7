"""Fused ops for contrastive learning and adversarial attacks (torch + triton only; never imports vidcsl).

    from kernels import info_nce, cross_info_nce, pgd_step

Every op has a materialised reference (``kernels.reference``, the specification), a tiled PyTorch
path (CPU) and a Triton path (CUDA, or CPU under ``TRITON_INTERPRET=1``); ``backend="auto"`` picks.
"""
