"""Classical matrix-completion baselines (pure PyTorch, CPU or CUDA, float32/float64).

========================  ============================================================
class                     paper
========================  ============================================================
:class:`SVT`              Cai, Candès & Shen (2010), singular value thresholding
:class:`SoftImpute`       Mazumder, Hastie & Tibshirani (2010), Soft-Impute
:class:`IRNN`             Lu, Tang, Yan & Lin (2014/2016), iteratively reweighted
                          nuclear norm, l_p surrogate
:class:`MSS`              Xu, Lin & Zha (2017), Schatten-1/2 via two nuclear-norm
                          factors (PALM)
:class:`TNNR`             Hu, Zhang, Ye, Li & He (2013), truncated nuclear norm, APGL
:class:`DMF`              Arora, Cohen, Hu & Luo (2019), deep matrix factorisation by
                          gradient descent from small init (implicit low-rank bias; no
                          SVD: ``dlrl_kernels.masked_loss`` and its chain-product backward)
========================  ============================================================

All share the interface of :class:`BaselineCompleter`::

    model = SVT(svd="randomized", max_iter=500).fit(X, mask, X_true=X_true)
    X_hat = model.complete()            # observed entries kept
    model.history, model.n_svd, model.fit_seconds

(:class:`DMF` accepts only ``svd="full"``, which it ignores: it computes no SVD.)
"""
from ._common import SVD_MODES, BaselineCompleter, randomized_svd
from .dmf import DMF
from .irnn import IRNN
from .mss import MSS
from .soft_impute import SoftImpute
from .svt import SVT
from .tnnr import TNNR

BASELINES = {"svt": SVT, "soft_impute": SoftImpute, "softimpute": SoftImpute, "irnn": IRNN,
             "mss": MSS, "tnnr": TNNR, "dmf": DMF}


def get_baseline(name: str, **kwargs) -> BaselineCompleter:
    """Instantiate a baseline by (case-insensitive) name, e.g. ``get_baseline("svt", svd="full")``."""
    key = name.lower().replace("-", "_")
    if key not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; choose from {sorted(set(BASELINES))}")
    return BASELINES[key](**kwargs)


__all__ = ["BaselineCompleter", "SVD_MODES", "randomized_svd", "SVT", "SoftImpute", "IRNN",
           "MSS", "TNNR", "DMF", "BASELINES", "get_baseline"]
