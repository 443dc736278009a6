# Two commands do all set-up from a fresh clone: `make demo` and `make test`.
PY ?= python3
VENV ?= .venv
# CPU PyTorch. GPU users: make demo TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu128"
TORCH_SPEC ?= torch==2.13.0
BIN = $(VENV)/bin

.PHONY: demo test lint bench clean

$(BIN)/upres: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[pretrained,demo,test]"
	touch $@

demo: $(BIN)/upres
	$(BIN)/upres demo -o demo-output

test: $(BIN)/upres
	$(BIN)/ruff check src tests benchmarks
	UPRES_NO_SKIPS=1 $(BIN)/python -m pytest -q

bench: $(BIN)/upres
	$(BIN)/python benchmarks/bench_inference.py

clean:
	rm -rf $(VENV) demo-output
