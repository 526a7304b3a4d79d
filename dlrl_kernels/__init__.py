"""dlrl-kernels: the ops of differentiable low-rank matrix completion.

Every public op takes ``backend="auto"|"reference"|"triton"|"cuda"`` (see ``_dispatch``);
the pure-PyTorch reference is also the CPU fallback. SPEC-level math is in each op's module
docstring.
"""
from ._dispatch import describe as backend_info
from .ops.chain import chain_grad, chain_products
from .ops.gram import gram
from .ops.block_chain import block_chain
from .ops.lowrank_block import lowrank_block
from .ops.lowrank_penalty import lowrank_penalty, lowrank_penalty_exact
from .ops.masked_residual import masked_loss, masked_residual
from .ops.masked_residual_sparse import SparsePattern, masked_loss_sparse, masked_residual_sparse, sparse_pattern
from .ops.pinv import pinv
from .ops.spd_power import spd_power
from .ops.spectral_norm import spectral_norm_sq

__version__ = "0.1.0"

__all__ = [
    "backend_info",
    "chain_grad",
    "chain_products",
    "gram",
    "lowrank_block",
    "block_chain",
    "lowrank_penalty",
    "lowrank_penalty_exact",
    "masked_loss",
    "masked_loss_sparse",
    "masked_residual",
    "masked_residual_sparse",
    "pinv",
    "spd_power",
    "spectral_norm_sq",
    "SparsePattern",
    "sparse_pattern",
]
