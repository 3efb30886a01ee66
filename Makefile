# The README's commands. `make demo` and `make test` set everything up on a machine
# with Python >= 3.10 and pip, then run the demo or the tests; `make docs` builds the site.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv demo test test-fast docs bench figures clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# The docs extra on top of the dev one (mkdocs, mkdocs-material, mkdocstrings with griffe).
$(VENV)/.docs-installed: $(VENV)/.installed pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev,docs]"
	touch $@

# Data hyper-cleaning on the embedded MNIST sample (2000/1000/2000, 25% wrong labels, linear
# model on the 784 pixels): pgdqp against BOME and AID-BiO over 2 seeds, a table and a plot.
# pgdqp runs with its defaults (against the constant step 1000 this demo used to set: verified
# validation loss 0.28 against 0.43, retrained accuracy 0.878 against 0.872, corruption AUC 0.92
# against 0.96; benchmarks/RESULTS.md, "make demo"). BOME and AID-BiO keep
# hand-set steps: with its defaults BOME reaches AUC 0.71 in 28 s a run (0.93 in 5.5 s with the
# phi = value variant of its paper's data-cleaning runs below), and AID-BiO takes 10 CG products,
# as the paper's few: its default 100 (exact v on small problems) never stops early on this
# ill-conditioned Hessian and takes about 3 minutes a run.
# The table puts the running validation loss (at the method's y) next to its verified value
# (at y re-solved at the final x); retrained_accuracy retrains the model from scratch at x.
DEMO_SETTINGS = \
	--set bome.step_size=100 --set bome.lower_step_size=1 --set bome.inner_step_size=1 --set bome.phi=value \
	--set bome.inner_steps=3 \
	--set aid_bio.step_size=100 --set aid_bio.inner_steps=5 --set aid_bio.inner_step_size=1 \
	--set 'aid_bio.linear_solver={method: cg, iters: 10}'

demo: venv
	$(BIN)/bilevel compare --problem hyper-cleaning --methods pgdqp,bome,aid_bio --seeds 2 --max-iter 400 \
		--log-every 50 --kkt none $(DEMO_SETTINGS) \
		--metrics val_loss,verified_val_loss,retrained_accuracy,corruption_auc --out runs/demo

# Two workers (pytest-xdist) for everything but the multi-process tests, which then run alone:
# their ranks need the cores to meet their time limits.
test: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -x -n 2 -m "not distributed"
	$(BIN)/python -m pytest -x -m distributed

test-fast: venv
	OMP_NUM_THREADS=1 $(BIN)/python -m pytest -x -n 2 -m "not slow"

# The API reference site (mkdocs.yml, docs/) into site/. --strict: a warning (a docstring griffe
# cannot parse, an Args entry that names no parameter, a broken link) fails the build.
# NO_MKDOCS_2_WARNING hides mkdocs-material's notice of its end of life (May 2027).
docs: $(VENV)/.docs-installed
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

# Performance benchmarks; each prints its table and writes its section of benchmarks/RESULTS.md.
bench: venv
	$(BIN)/python benchmarks/autodiff.py
	$(BIN)/python benchmarks/overhead.py
	$(BIN)/python benchmarks/iteration_cost.py
	$(BIN)/python benchmarks/memory.py
	$(BIN)/python benchmarks/batch.py
	$(BIN)/python benchmarks/time_to_target.py
	$(BIN)/python benchmarks/minibatch_cost.py

# The seed paper's figures (PNGs under runs/, tables in benchmarks/RESULTS.md); about 10 minutes on 2 cores (measured).
figures: venv
	$(BIN)/python benchmarks/fig4_synthetic.py
	for c in fig2-pca fig2-784 fig3-mlp fig5-coreset; do \
		$(BIN)/bilevel sweep configs/$$(echo $$c | tr - _).yaml --out runs/$$c -j 2 --resume && \
		$(BIN)/bilevel table runs/$$c --results benchmarks/RESULTS.md --title "configs/$$(echo $$c | tr - _).yaml" \
		|| exit 1; \
	done

clean:
	rm -rf $(VENV) runs site .pytest_cache
