"""Triton kernels of dlrl-kernels (the ``backend="triton"`` twin of ``dlrl_kernels.ops``).

Modules (each implements the "backend primitives" named in the docstring of its op module):

- ``masked_residual``: fused dense residual / loss (rank-d product formed tile by tile in
  registers, mask or NaN-as-missing in the epilogue) and the fused backward (R, Q).
- ``masked_residual_sparse``: SDDMM on COO indices and the two scatter products (atomic,
  CSR-segmented and fully deterministic variants).
- ``small_matrix``: batched d×d work as two kernels — a tiled batched GEMM with an
  ``αI + βAB`` epilogue (``bmm``), which is the matmul primitive that ``dlrl_kernels._newton``
  plugs into its one Newton–Schulz orchestration (pinv, square root, powers, power iteration,
  their backwards), and the Gram ``YᵀY``. Tiles stay ≤ 64×64 so every d compiles spill-free.

Runs on CUDA tensors, or on CPU tensors under the interpreter (``TRITON_INTERPRET=1`` set
before this package is imported — that is how CI tests it; ``tl.dot`` is exact there).

Shared helpers live here: interpreter detection, the autotune config policy (several configs
on a real GPU, exactly one otherwise: autotuning needs a GPU driver) and small host utilities.
"""
from __future__ import annotations

import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
#: compiled kernels on a real GPU (as opposed to the CPU interpreter)
ON_GPU = torch.cuda.is_available() and not INTERPRET


class ConfigList(list):
    """The autotune candidates in use here, with ``.gpu``: the full list a GPU run can pick
    from (``bench/compile_report.py`` compiles every one of them for sm_90, also on a CPU)."""

    gpu: list = []


def configs(gpu_configs, cpu_config):
    """Autotune candidates: the list on a real GPU, the single ``cpu_config`` otherwise.

    Every GPU candidate must compile for sm_90 with 0 spill stores and within the 232,448 B
    of shared memory a Hopper block may use: the autotuner compiles (and times) each one on a
    user's first call, so a config that spills or cannot launch costs seconds to minutes of
    first-call time for nothing. ``bench/results/compile_sm90.md`` is the evidence.
    """
    gpu = list(gpu_configs)
    out = ConfigList(gpu if ON_GPU else [cpu_config])
    out.gpu = gpu
    return out


def next_pow2(x: int, lo: int = 16) -> int:
    """Smallest power of two ≥ max(x, lo) (tl.arange needs powers of two, tl.dot dims ≥ 16)."""
    return max(lo, triton.next_power_of_2(int(max(x, 1))))


def num_sms(device) -> int:
    if isinstance(device, torch.device) and device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def tl_dtype_ok(t: torch.Tensor) -> bool:
    return t.dtype in (torch.float32, torch.float64)


def check_dtype(*ts):
    for t in ts:
        if t is not None and not tl_dtype_ok(t):
            raise TypeError(f"triton kernels: expected float32 or float64 tensors, got {t.dtype}")


def scale_tensor(scale, like: torch.Tensor) -> torch.Tensor:
    """``scale`` (python number or 0-d / 1-element tensor, e.g. autograd's grad_output) as a
    1-element tensor of ``like``'s dtype and device, read inside the kernel (no host sync)."""
    if isinstance(scale, torch.Tensor):
        if scale.numel() != 1:
            raise ValueError(f"scale: expected a scalar or a 1-element tensor, got shape {tuple(scale.shape)}")
        return scale.detach().reshape(1).to(dtype=like.dtype, device=like.device)
    return torch.full((1,), float(scale), dtype=like.dtype, device=like.device)


__all__ = ["INTERPRET", "ON_GPU", "ConfigList", "configs", "next_pow2", "num_sms", "scale_tensor", "check_dtype"]
