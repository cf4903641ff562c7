"""Kernel tests run Triton through its CPU interpreter; the flag must be set before triton is first imported."""

import os

os.environ["TRITON_INTERPRET"] = "1"
