"""Metrics, named for what they compute (RMSE is a square root; MSE is not RMSE)."""
from __future__ import annotations

import math

import torch


def mse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    if pred.numel() == 0:
        raise ValueError("pred: expected at least one entry to score, got none")
    d = pred.double() - truth.double()
    return float((d * d).mean())


def rmse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    """Root mean squared error (paper Eq. 48 *with* the square root)."""
    return math.sqrt(mse(pred, truth))


def mae(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred.double() - truth.double()).abs().mean())


def schatten_p(M: torch.Tensor, p: float) -> float:
    """Σ σ_i(M)^p through the small Gram (no SVD of the long side)."""
    G = M.transpose(-1, -2) @ M if M.shape[-2] >= M.shape[-1] else M @ M.transpose(-1, -2)
    lam = torch.linalg.eigvalsh(0.5 * (G + G.transpose(-1, -2)).double()).clamp_min(0)
    return float((lam.sqrt() ** p).sum())
