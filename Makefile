# The commands people type. `make run` and `make test` set everything up from a fresh clone.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
CONFIG ?= soulray/configs/demo.yaml
FINETUNE_CONFIG ?= soulray/configs/finetune-demo.yaml
EVALUATE_CONFIG ?= soulray/configs/evaluate-demo.yaml
# Extra `--set key=value` overrides for run/submit, e.g. make run ARGS="--set storage.root=/tmp/out"
ARGS   ?=
# Extra `ray job submit` options for submit, e.g. RAY_JOB_EXTRA="--runtime-env-json '{\"pip\": [...]}'"
RAY_JOB_EXTRA ?=
export HF_HUB_OFFLINE := 1

.PHONY: run finetune evaluate test test-fast bench bench-quick lint submit clean

$(STAMP): pyproject.toml Makefile
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e ".[dev,train]"
	touch $(STAMP)

run: $(STAMP)  ## regenerate the bundled sample on a local Ray into ./output
	$(BIN)/python jobs/regenerate.py --config $(CONFIG) $(ARGS)

finetune: $(STAMP)  ## fine-tune the tiny model on the version `make run` published (CPU, a few minutes)
	$(BIN)/python jobs/finetune.py --config $(FINETUNE_CONFIG) $(ARGS)

evaluate: $(STAMP)  ## score the newest `make finetune` model, before and after, on held-out dialogues (Table 1)
	$(BIN)/python jobs/evaluate.py --config $(EVALUATE_CONFIG) $(ARGS)

test: $(STAMP)  ## the whole test suite (starts local Ray and a loopback S3 server itself)
	$(BIN)/pytest -ra $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(BIN)/pytest -ra -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)  ## the benchmark suite (~75 min on 2 cores; the 1M-row end-to-end run is 50 of them); writes bench/results/latest.{md,json}
	$(BIN)/python bench/run.py --out bench/results

bench-quick: $(STAMP)  ## the same at small sizes (16 min here beside the test suite)
	$(BIN)/python bench/run.py --quick --out bench/results

lint: $(STAMP)
	$(BIN)/ruff check soulray jobs tests bench

submit: $(STAMP)  ## submit the regenerate job to the cluster at $$RAY_ADDRESS
	@test -n "$$RAY_ADDRESS" || (echo "set RAY_ADDRESS to the cluster's dashboard address (http://head:8265)"; exit 2)
	$(BIN)/ray job submit --address "$$RAY_ADDRESS" --working-dir . $(RAY_JOB_EXTRA) -- python jobs/regenerate.py --config $(CONFIG) $(ARGS)

clean:
	rm -rf $(VENV) output bench/results .pytest_cache
