"""Kernels run on CPU through Triton's interpreter: the variable must be set before the kernel modules import."""

import os

os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

pytest.importorskip("triton")
