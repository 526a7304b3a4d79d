# The two commands of the README:
#   make demo   set up .venv (torch 2.13.0 CPU wheel first), then run `dlrl demo`
#   make test   set up .venv, then run the test suite (Triton kernels under TRITON_INTERPRET=1)
# PYTHON picks the interpreter that creates the venv; VENV where it lives.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch first and pinned, so that installing the project never pulls the registry's CUDA build
TORCH_PIN ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: setup demo test bench compile-cuda compile-report test-compat gpu-check gpu-check-dry clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/dlrl demo

# pytest exits 5 when it collected no tests: that is a failure here, not a pass
test: setup
	@$(BIN)/python -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: FAILED: pytest collected no tests"; exit 1; fi; exit $$rc

bench: setup
	$(BIN)/python bench/bench_kernels.py

compile-cuda:
	PYTHON=$(BIN)/python bash .ci/compile_cuda.sh

# Every Triton launch compiled for sm_90 without a GPU: registers, spills, shared memory
# (writes bench/results/compile_sm90.{json,md}; CI runs the --quick subset in tests/)
compile-report: setup
	$(BIN)/python bench/compile_report.py

# The lent GPU image runs torch 2.11 + triton 3.6: a second venv with triton 3.6 (torch 2.13
# CPU first, as in .venv) runs the Triton interpreter tests and the quick compile report.
COMPAT_VENV ?= .venv-compat
COMPAT_TRITON ?= triton==3.6.*
$(COMPAT_VENV)/.installed: pyproject.toml setup.py
	$(PYTHON) -m venv $(COMPAT_VENV)
	$(COMPAT_VENV)/bin/python -m pip install -q --upgrade pip
	$(COMPAT_VENV)/bin/python -m pip install -q "$(TORCH_PIN)"
	$(COMPAT_VENV)/bin/python -m pip install -q "$(COMPAT_TRITON)"
	$(COMPAT_VENV)/bin/python -m pip install -q -e ".[test]"
	# triton 3.6's interpreter turns a runtime int loop bound into a 1-element array and calls
	# int() on it, which numpy >= 2.4 rejects ("only 0-dimensional arrays ..."): numpy < 2.4 here
	$(COMPAT_VENV)/bin/python -m pip install -q "numpy<2.4"
	$(COMPAT_VENV)/bin/python -c "import triton, sys; v = triton.__version__; print('compat triton', v); sys.exit(0 if v.startswith('3.6') else 1)"
	touch $@

test-compat: $(COMPAT_VENV)/.installed
	$(COMPAT_VENV)/bin/python -c "import torch, triton; print('test-compat: torch', torch.__version__, 'triton', triton.__version__)"
	TRITON_INTERPRET=1 $(COMPAT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/test_triton_masked_residual.py tests/test_triton_sparse.py tests/test_triton_small_matrix.py
	$(COMPAT_VENV)/bin/python bench/compile_report.py --quick --out /tmp/dlrl_compat_compile/compile_sm90

# One-call GPU acceptance run (on a CUDA machine; writes under OUT, default ./out/gpu_check)
OUT ?= out/gpu_check
gpu-check:
	bash bench/gpu_acceptance.sh --out "$(OUT)"

# the same script end to end on CPU at tiny sizes (CI runs it through tests/test_gpu_acceptance_dry.py)
gpu-check-dry: setup
	PYTHON=$(BIN)/python bash bench/gpu_acceptance.sh --dry-run --out "$(OUT)-dry"

clean:
	rm -rf $(VENV) $(COMPAT_VENV) build *.egg-info
