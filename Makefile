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

.PHONY: setup demo test bench compile-cuda clean

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

clean:
	rm -rf $(VENV) build *.egg-info
