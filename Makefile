# The way in: `make demo` and `make test`. Everything installs into .venv (created on first use).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEVICES ?= 8
export XLA_FLAGS ?= --xla_force_host_platform_device_count=$(DEVICES)
export TF_CPP_MIN_LOG_LEVEL ?= 2
WORKDIR ?= workdirs/demo

.PHONY: install test test-fast lint demo bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

# Every test, on CPU with $(DEVICES) fake devices (the sharded code paths are the ones tested).
test: install
	$(BIN)/python -m pytest -n 2 --dist loadgroup -q tests

test-fast: install
	$(BIN)/python -m pytest -n 2 -q -m "not slow" tests

lint: install
	$(BIN)/ruff check alexnet_jax configs tests benchmarks
	$(BIN)/ruff format --check alexnet_jax configs tests benchmarks

# Train a small AlexNet for a few minutes on this machine, evaluate it, and say where everything is.
demo: install
	$(BIN)/python -m alexnet_jax.demo --workdir=$(WORKDIR)

bench: install
	$(BIN)/python -m alexnet_jax.benchmark --model=paper --batch_size=32 --dtype=float32 --steps=5

clean:
	rm -rf workdirs demo_data .pytest_cache
