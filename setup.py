"""Build script.

Pure-Python install by default. The CUDA extension in ``csrc/`` is built only when a CUDA
toolkit and a CUDA build of torch are both present, and ``DLRL_SKIP_CUDA`` is not set; the
package imports and runs without it (the dispatch point falls back to Triton, then to the
pure-PyTorch reference).
"""
import os

from setuptools import find_packages, setup


def _packages():
    pkgs = find_packages(where=".", include=["dlrl_kernels", "dlrl_kernels.*"])
    pkgs += ["dlrl"] + ["dlrl." + p for p in find_packages(where="python/dlrl")]
    return pkgs


def _package_dir():
    return {"dlrl_kernels": "dlrl_kernels", "dlrl": "python/dlrl"}


def _cuda_extension():
    if os.environ.get("DLRL_SKIP_CUDA"):
        return [], {}
    try:
        import torch
        from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CUDAExtension
    except Exception:  # torch missing at build time: pure-Python install
        return [], {}
    if torch.version.cuda is None or CUDA_HOME is None:
        return [], {}
    sources = sorted(
        os.path.join("csrc", f) for f in os.listdir("csrc") if f.endswith((".cu", ".cpp"))
    )
    if not sources:
        return [], {}
    ext = CUDAExtension(
        name="dlrl_kernels._C",
        sources=sources,
        extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3", "--use_fast_math", "-lineinfo"]},
    )
    return [ext], {"build_ext": BuildExtension}


ext_modules, cmdclass = _cuda_extension()

setup(
    packages=_packages(),
    package_dir=_package_dir(),
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
