# The two commands a newcomer needs: `make demo` and `make test`. Each sets everything up first.
VENV ?= .venv
PY := $(VENV)/bin/python
POSTTRAIN := $(VENV)/bin/posttrain
DEMO_DIR ?= runs/demo
PYTEST_ARGS ?=

.PHONY: setup demo test test-slow test-all clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# SFT then DPO on the builtin SmolLM2-135M-Instruct with the shipped sample data; prints the metrics.
demo: setup
	$(POSTTRAIN) sft examples/demo/sft.yaml train.output_dir=$(DEMO_DIR)/sft train.overwrite=true
	$(POSTTRAIN) dpo examples/demo/dpo.yaml model.name=$(DEMO_DIR)/sft/model train.output_dir=$(DEMO_DIR)/dpo train.overwrite=true
	$(PY) scripts/demo_summary.py $(DEMO_DIR)

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest -q -m slow $(PYTEST_ARGS)

test-all: setup
	$(PY) -m pytest -q -m "not gpu" $(PYTEST_ARGS)

clean:
	rm -rf runs .pytest_cache
