"""One backend registry for every fused op (``info_nce`` and ``pgd_step``): names, dispatch rule, modules.

Backends: ``reference`` (the materialised specification in ``kernels.reference``), ``torch`` (eager /
tiled PyTorch, any device: the CPU path) and ``triton`` (CUDA, or CPU tensors when triton was imported
with ``TRITON_INTERPRET=1``). ``auto`` picks triton for CUDA tensors when triton imports, torch otherwise.
Each op names its own modules in ``OPS``; the rule that picks one is the same for all of them.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import torch

BACKENDS = ("auto", "reference", "torch", "triton")

# op -> backend -> module implementing it (the reference lives in kernels.reference for every op)
OPS: dict[str, dict[str, str]] = {
    "info_nce": {"torch": "kernels.info_nce_torch", "triton": "kernels.info_nce_triton"},
    "pgd_step": {"torch": "kernels.pgd_torch", "triton": "kernels.pgd_triton"},
}
# dtypes a triton module cannot take (the InfoNCE kernels compute fp32 at most)
TRITON_REFUSES = {"info_nce": (torch.float64,), "pgd_step": ()}

_imported: dict[str, ModuleType | str] = {}  # module path -> module, or the import error as text


def module(op: str, backend: str) -> ModuleType:
    """The module implementing ``op`` on a resolved ``backend`` (imported once; errors are kept)."""
    path = OPS[op][backend]
    if path not in _imported:
        try:
            _imported[path] = importlib.import_module(path)
        except Exception as exc:  # triton missing, no driver, ...
            _imported[path] = f"{type(exc).__name__}: {exc}"
    mod = _imported[path]
    if isinstance(mod, str):
        raise ValueError(f"{op}: backend={backend!r} is unavailable: {mod}")
    return mod


def triton_available(op: str) -> bool:
    try:
        module(op, "triton")
    except ValueError:
        return False
    return True


def resolve(op: str, backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """The one dispatch rule. Returns "reference", "torch" or "triton"; raises ValueError (naming ``op``)
    for an unknown name or a backend that cannot run tensors of this device and dtype."""
    if backend not in BACKENDS:
        raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "auto":
        return "triton" if device.type == "cuda" and triton_available(op) else "torch"
    if backend == "triton":
        module(op, "triton")  # raises "unavailable" with the import error
        if device.type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"{op}: backend='triton' needs CUDA tensors (got CPU tensors): set TRITON_INTERPRET=1 "
                             "before triton is imported to run it on CPU, or use backend='torch'")
        if device.type not in ("cpu", "cuda"):
            raise ValueError(f"{op}: backend='triton' needs CUDA tensors, got {device}")
        if dtype in TRITON_REFUSES[op]:
            raise ValueError(f"{op}: backend='triton' does not support {dtype}; use backend='torch'")
    return backend
