# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
# PyTorch and torchvision as PyPI ships them for Linux (CUDA builds that also run on the CPU);
# torchvision is for spandrel, which provides the SwinIR/HAT/DAT/... architectures.
# Other builds: make demo TORCH_SPEC="torch torchvision --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
BIN = $(VENV)/bin
# Tests run in this many processes, one thread each (on 2 cores: 11 minutes instead of 16; two
# processes with a thread per core each slow each other down far more than 2x)
TEST_WORKERS ?= 2

.PHONY: demo test docs lint bench clean

$(BIN)/upres: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e ".[pretrained,demo,zoo,test]"
	touch $@

demo: $(BIN)/upres
	$(BIN)/upres demo -o demo-output

test: $(BIN)/upres
	$(BIN)/ruff check src tests benchmarks docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet
	OMP_NUM_THREADS=1 UPRES_NO_SKIPS=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS)

# The documentation site, into build/site/ (the reference pages are generated from the code)
docs: $(BIN)/upres
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: $(BIN)/upres
	$(BIN)/python benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) demo-output
