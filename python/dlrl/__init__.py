"""DLRL: differentiable low-rank matrix completion, on the ``dlrl_kernels`` ops.

>>> import dlrl
>>> X_filled = dlrl.complete(X_with_nans, rank=20)          # doctest: +SKIP
>>> model = dlrl.DLRL((n_users, n_items), bias=True)        # doctest: +SKIP
>>> history = model.fit(rows=r, cols=c, values=v)            # doctest: +SKIP
"""
from .complete import complete  # (torch-free at import: the function imports it when called)

__version__ = "0.1.0"
__all__ = ["DLRL", "complete", "Observations", "as_observations"]

#: where each public name lives; imported on first use (PEP 562), so that ``import dlrl`` — and
#: ``dlrl --help`` / ``dlrl --version`` — do not import torch (2–3 s on the CI machine)
_LAZY = {"DLRL": "model", "Observations": "model", "as_observations": "model"}
#: submodules reachable as attributes without an import statement (``dlrl.tuning.fit_tuned``)
_SUBMODULES = ("tuning", "neighbors")


def __getattr__(name):
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f".{name}", __name__)
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'dlrl' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
