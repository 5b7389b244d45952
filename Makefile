# The way in: `make demo` and `make test`. Everything installs into .venv (created on first use).
# pip installs with --no-compile: Python byte-compiles a module when it is first imported, and most installed modules
# never are (measured on a busy 2-core machine: .venv-latest's install 369 s -> 195 s, 84 -> 47 CPU seconds).
# That holds only where Python may write what it compiled: with PYTHONDONTWRITEBYTECODE set (this project's machines
# set it) every process compiled TensorFlow's and JAX's sources again, ~12 s of CPU each (a tiny 8-device training
# run 42 -> 27 CPU seconds without it; importing TensorFlow 15 -> 6 s). make's commands run without it.
unexport PYTHONDONTWRITEBYTECODE
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEVICES ?= 8
# Tests run on $(DEVICES) fake CPU devices. XLA aborts a CPU collective that waits 40 s for a straggler; on a loaded
# 2-core machine with 8 fake devices that is a false alarm, so the tests give it 10 minutes.
TEST_XLA_FLAGS := --xla_force_host_platform_device_count=$(DEVICES) \
  --xla_cpu_collective_call_terminate_timeout_seconds=600 --xla_cpu_collective_call_warn_stuck_timeout_seconds=120
export TF_CPP_MIN_LOG_LEVEL ?= 2
WORKDIR ?= workdirs/demo

.PHONY: install install-aot aot-env install-colab install-latest test-latest durations test test-fast test-unit test-system test-docs breaks lint demo bench clean

install: $(VENV)/.installed

# The accelerator compilers for alexnet_jax.aot (the `aot` extra: libtpu, XLA:GPU's plugin and ptxas, pinned to
# the jax they serve) in a venv of their own, so that the CPU tools never look for a TPU or GPU.
AOT_VENV ?= .venv-aot
install-aot aot-env: $(AOT_VENV)/.installed
$(AOT_VENV)/.installed: pyproject.toml
	@test -x $(AOT_VENV)/bin/python || $(PYTHON) -m venv $(AOT_VENV)
	$(AOT_VENV)/bin/python -m pip install -q --upgrade pip
	$(AOT_VENV)/bin/python -m pip install -q --no-compile -e '.[aot]'
	@touch $@

# Google Colab's runtime (constraints/colab.txt: Python 3.13, jax 0.7.2, flax 0.11.2, ...) in a venv of its own, and
# this package installed into it with those versions held (tests/docs/test_colab.py checks that none of them changed).
# colab-before.txt is Colab's stack alone, frozen once when the venv is made: a reinstall after pyproject.toml changes
# keeps it (frozen again then, it would list this package as Colab's own); a changed constraints/colab.txt remakes all.
COLAB_VENV ?= .venv-colab
COLAB_PYTHON ?= $(shell PYENV_VERSION=3.13.0 pyenv which python 2>/dev/null || command -v python3.13)
install-colab: $(COLAB_VENV)/.installed
$(COLAB_VENV)/.installed: pyproject.toml constraints/colab.txt
	@test -n "$(COLAB_PYTHON)" || { echo "error: no Python 3.13 (Colab's): install it or set COLAB_PYTHON=" >&2; exit 1; }
	@if [ -f $(COLAB_VENV)/colab-before.txt ] && [ constraints/colab.txt -nt $(COLAB_VENV)/colab-before.txt ]; then rm -rf $(COLAB_VENV); fi
	@test -x $(COLAB_VENV)/bin/python || $(COLAB_PYTHON) -m venv $(COLAB_VENV)
	$(COLAB_VENV)/bin/python -m pip install -q --upgrade pip
	$(COLAB_VENV)/bin/python -m pip install -q --no-compile -r constraints/colab.txt
	@test -f $(COLAB_VENV)/colab-before.txt || $(COLAB_VENV)/bin/python -m pip freeze > $(COLAB_VENV)/colab-before.txt
	$(COLAB_VENV)/bin/python -m pip install -q --no-compile -c constraints/colab.txt .
	@touch $@

# The other end of pyproject.toml's ranges: the newest release of every package they allow, on Python 3.12, in a venv
# of its own (a fresh venv resolves each package to its newest allowed release; versions.txt records what that was).
LATEST_VENV ?= .venv-latest
LATEST_PYTHON ?= $(shell PYENV_VERSION=3.12.1 pyenv which python 2>/dev/null || command -v python3.12)
install-latest: $(LATEST_VENV)/.installed
$(LATEST_VENV)/.installed: pyproject.toml
	@test -n "$(LATEST_PYTHON)" || { echo "error: no Python 3.12: install it or set LATEST_PYTHON=" >&2; exit 1; }
	@test -x $(LATEST_VENV)/bin/python || $(LATEST_PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(LATEST_VENV)/bin/python -m pip install -q --no-compile --upgrade --upgrade-strategy eager -e '.[dev,tf]'
	$(LATEST_VENV)/bin/python -m pip freeze > $(LATEST_VENV)/versions.txt
	@touch $@

# The package and the developer tools (tests, lint, the PyTorch reference).
$(VENV)/.installed: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[dev,tf]'
	@touch $@ $(VENV)/.installed-package

# The package and TensorFlow (tf.data): what the demo (and training) needs.
$(VENV)/.installed-package: pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q --no-compile -e '.[tf]'
	@touch $@

# Every test, on CPU with $(DEVICES) fake devices (the sharded code paths are the ones tested). Three levels:
# tests/unit (fast, in-process), tests/system (command lines, several processes, faults, AOT compiles, launch kits,
# cloud storage), tests/docs (the README's and docs' commands, the notebooks, Colab's stack). `make test` runs them in
# one session on two workers, longest modules first (tests/conftest.py), so that neither worker idles while the other
# finishes a level; test-unit/-system/-docs run one level. The full-size CLI tests (~10 GB each) share one worker
# (--dist loadgroup), so two never run at once. A run that collects no test fails (pytest's exit 5), saying so.
# JAX's compilation cache for the tests lives in .cache/jax-tests (tests/conftest.py), the JUnit reports beside it.
# One test worker per core, at least 2, and at most one per 8 GB of memory (a full-size test takes ~10 GB with 8 fake
# devices; those share one worker): 2 on a 2-core, 24 GB machine. TEST_WORKERS=N sets it.
TEST_WORKERS ?= $(shell python3 -c 'import os; m = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30; \
  print(max(2, min(os.cpu_count() or 2, int(m // 8))))' 2>/dev/null || echo 2)
PYTEST = XLA_FLAGS="$(TEST_XLA_FLAGS)" $(BIN)/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -q
define run_tests
	@mkdir -p .cache
	$(PYTEST) $(2) --junitxml=.cache/junit-$(1).xml $(3) || { rc=$$?; [ $$rc != 5 ] || echo "error: pytest collected no test in $(3)" >&2; exit $$rc; }
endef

test: install install-aot install-colab
	$(call run_tests,all,--durations=30,tests/unit tests/system tests/docs)

test-fast test-unit: install
	$(call run_tests,unit,--durations=10,tests/unit)

test-system: install install-aot
	$(call run_tests,system,--durations=25,tests/system)

test-docs: install install-colab
	$(call run_tests,docs,--durations=10,tests/docs)

# tests/support/durations.txt (the order `make test` starts modules in) from the last `make test`'s JUnit report.
durations:
	$(BIN)/python -m tests.support.durations .cache/junit-all.xml

# The newest allowed versions (.venv-latest, Python 3.12): the unit level (preparing and reading data through tf.data
# included), then a run through the command line that trains, resumes twice (once onto another device count) and
# evaluates with 10 crops. The first line says which versions ran.
LATEST_TESTS := tests/unit tests/system/test_cli.py::test_train_then_resume_then_resume_on_one_device_then_evaluate
test-latest: install-latest
	@$(LATEST_VENV)/bin/python -c 'import sys; print("newest allowed on Python", sys.version.split()[0] + ":", \
	  *[l.strip() for l in open("$(LATEST_VENV)/versions.txt") if l.split("==")[0].lower().replace("_", "-") in \
	  ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "tensorflow-cpu", "tensorflow-datasets", "numpy")])'
	@mkdir -p .cache
	XLA_FLAGS="$(TEST_XLA_FLAGS)" $(LATEST_VENV)/bin/python -m pytest -n $(TEST_WORKERS) --dist loadgroup -q --durations=10 \
	  --junitxml=.cache/junit-latest.xml $(LATEST_TESTS)

# Each deliberate one-line break of tests/support/breaks.py applied in a scratch copy: the test named for it must fail
# (not in `make test`: a copy and a test run per break; ONLY=name for one).
breaks: install
	$(BIN)/python -m tests.support.breaks $(if $(ONLY),--only $(ONLY))

lint: install
	$(BIN)/ruff check alexnet_jax configs tests benchmarks launch notebooks
	$(BIN)/ruff format --check alexnet_jax configs tests benchmarks launch notebooks
	$(BIN)/shellcheck launch/*.sh launch/*.sbatch

# Generate the embedded dataset, prepare it, train a small AlexNet on this machine's own devices, 10-crop evaluate.
demo: $(VENV)/.installed-package
	$(BIN)/python -m alexnet_jax.demo --workdir=$(WORKDIR)

bench: install
	$(BIN)/python -m alexnet_jax.benchmark --model=paper --batch_size=32 --dtype=float32 --steps=5

clean:
	rm -rf workdirs demo_data .pytest_cache
