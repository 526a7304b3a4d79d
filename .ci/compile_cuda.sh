#!/usr/bin/env bash
# Standalone compile check of the CUDA sources, for machines without a GPU or a CUDA build
# of torch (CI). Never runs a kernel.
#
#   1. every csrc/*.cu: nvcc -std=c++17 -O3 -arch=<arch> -c into a temp dir (plain CUDA, the
#      .cu files include no torch headers);
#   2. csrc/bindings.cpp: g++ -fsyntax-only against the installed torch's headers, when torch,
#      its c10/cuda headers, the CUDA runtime headers, Python's headers and g++ are all there
#      (skipped with a note otherwise, or when DLRL_SKIP_BINDINGS_CHECK=1).
#
# Exit 0 with a SKIP line when nvcc is not on PATH; exit 1 when any file fails, naming it.
# DLRL_CUDA_ARCHS overrides the target list (space-separated, default "sm_90"), e.g.
#   DLRL_CUDA_ARCHS="sm_80 sm_90" bash .ci/compile_cuda.sh
set -u

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ARCHS="${DLRL_CUDA_ARCHS:-sm_90}"

if ! command -v nvcc >/dev/null 2>&1; then
  echo "compile_cuda: SKIP (nvcc not on PATH; the CUDA sources were not compiled)"
  exit 0
fi

TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT

shopt -s nullglob
sources=("$ROOT"/csrc/*.cu)
if [ "${#sources[@]}" -eq 0 ]; then
  echo "compile_cuda: FAILED (no csrc/*.cu files found under $ROOT)"
  exit 1
fi

echo "compile_cuda: $(nvcc --version | tail -n 1)"
status=0
for arch in $ARCHS; do
  for src in "${sources[@]}"; do
    name="$(basename "$src" .cu)"
    start=$SECONDS
    if out="$(nvcc -std=c++17 -O3 -arch="$arch" -c "$src" -o "$TMP/$name.$arch.o" 2>&1)"; then
      echo "compile_cuda: ok     csrc/$name.cu ($arch, $((SECONDS - start)) s)"
      [ -n "$out" ] && printf '%s\n' "$out"
    else
      echo "compile_cuda: FAILED csrc/$name.cu ($arch)"
      printf '%s\n' "$out"
      status=1
    fi
  done
done

# --- bindings.cpp syntax check (needs no CUDA build of torch) -------------------------------
bindings="$ROOT/csrc/bindings.cpp"
if [ -f "$bindings" ] && [ "${DLRL_SKIP_BINDINGS_CHECK:-0}" = "0" ]; then
  PY="${PYTHON:-python}"
  torch_inc="$("$PY" -c 'import torch.utils.cpp_extension as c; print(" ".join(c.include_paths()))' 2>/dev/null || true)"
  py_inc="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])' 2>/dev/null || true)"
  cuda_inc=""
  nvcc_dir="$(dirname "$(readlink -f "$(command -v nvcc)")")"
  for cand in "${CUDA_HOME:-}/include" "$nvcc_dir/../include" /usr/local/cuda/include; do
    if [ -f "$cand/cuda_runtime_api.h" ]; then cuda_inc="$cand"; break; fi
  done
  have_c10_cuda=0
  for p in $torch_inc; do [ -f "$p/c10/cuda/CUDAGuard.h" ] && have_c10_cuda=1; done
  if [ -z "$torch_inc" ] || [ "$have_c10_cuda" = 0 ] || [ -z "$cuda_inc" ] ||
     [ ! -f "$py_inc/Python.h" ] || ! command -v g++ >/dev/null 2>&1; then
    echo "compile_cuda: skip   csrc/bindings.cpp syntax check (needs torch with c10/cuda headers, CUDA and Python headers, g++)"
  else
    incs=()
    for p in $torch_inc; do incs+=(-isystem "$p"); done
    # The CPU wheel ships c10/cuda headers without the generated cuda_cmake_macros.h;
    # C10_USING_CUSTOM_GENERATED_MACROS skips that include (syntax check only, nothing links).
    start=$SECONDS
    if out="$(g++ -std=c++20 -fsyntax-only -Wall -DC10_USING_CUSTOM_GENERATED_MACROS \
        "${incs[@]}" -isystem "$py_inc" -isystem "$cuda_inc" -I"$ROOT/csrc" "$bindings" 2>&1)"; then
      echo "compile_cuda: ok     csrc/bindings.cpp (g++ -fsyntax-only, $((SECONDS - start)) s)"
      [ -n "$out" ] && printf '%s\n' "$out"
    else
      echo "compile_cuda: FAILED csrc/bindings.cpp (g++ -fsyntax-only)"
      printf '%s\n' "$out"
      status=1
    fi
  fi
fi

if [ "$status" -ne 0 ]; then
  echo "compile_cuda: FAILED (see above)"
else
  echo "compile_cuda: all CUDA sources compiled"
fi
exit "$status"
