# The README's commands. `make demo` and `make test` set everything up on a machine
# with Python >= 3.10 and pip, then run the demo or the tests.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-fast bench figures clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(BIN)/bilevel compare --problem synthetic-sc --methods pgdqp,sgf --seeds 3 --max-iter 3000 \
		--log-every 50 --out runs/demo

test: venv
	$(BIN)/python -m pytest -x

test-fast: venv
	$(BIN)/python -m pytest -x -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache
