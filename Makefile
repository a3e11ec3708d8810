# The two commands of the README: `make demo` and `make test`. Both create or reuse .venv.
VENV ?= .venv
PORTABLE_EP := $(VENV)/bin/portable-ep
PYTEST_ARGS ?=

.PHONY: venv demo test bench soak images clean

venv:
	@VENV=$(VENV) scripts/bootstrap.sh

demo: venv
	$(PORTABLE_EP) demo

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

bench: venv
	$(VENV)/bin/python benchmarks/peers.py
	$(VENV)/bin/python benchmarks/serving_overhead.py
	$(VENV)/bin/python benchmarks/int8_throughput.py
	$(VENV)/bin/python benchmarks/loadgen_floor.py
	$(VENV)/bin/python benchmarks/generation.py
	$(VENV)/bin/python benchmarks/openai_api.py
	$(VENV)/bin/python benchmarks/perf_analyzer_encoder.py

# 30 minutes of load with bad requests and a stub killed every 5 minutes (docs/self-healing.md).
soak: venv
	$(VENV)/bin/python benchmarks/soak.py

# One image per hardware target, each checked in a container (needs root or a Docker engine; see README).
images: venv
	VENV=$(VENV) ci/run_matrix.sh

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
