# Two entry points for a fresh machine: `make demo` and `make test`.
# Each creates .venv if missing and installs the project (editable, with dev tools) into it.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-nonrobust test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/vidcsl demo

# Robust / non-robust feature matrix (docs/nonrobust.md): trains SL, SL-AT and CSL on the embedded digits,
# builds D_NR / D_det / D_rand / D_R from them and trains SL, CSL, CSL+FN, BYOL on each (~2 min on 2 idle cores).
demo-nonrobust: $(STAMP)
	$(BIN)/vidcsl nonrobust configs/nonrobust_demo.yaml

# Two test processes share the cores: idle OpenMP threads sleep instead of spinning (benchmarks/bench_contention.py).
test: $(STAMP)
	OMP_WAIT_POLICY=PASSIVE TRITON_INTERPRET=1 $(BIN)/python -m pytest -n 2 --timeout 900 tests

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_info_nce.py --small
	$(BIN)/python benchmarks/bench_pgd.py --small
	$(BIN)/python benchmarks/bench_loader.py --small
	$(BIN)/python benchmarks/bench_attack.py --small
	$(BIN)/python benchmarks/bench_train.py --small
	$(BIN)/python benchmarks/bench_contention.py --small

clean:
	rm -rf $(VENV) runs .pytest_cache
