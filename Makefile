# `make run` serves on 127.0.0.1:8000 (HTTP) and 50051 (gRPC); `make test` runs the suite.
# Installs are skipped while pyproject.toml is unchanged (stamp files inside .venv). pip byte-compiles what it
# installs (25 s of a fresh install's 90 s of CPU): with PYTHONDONTWRITEBYTECODE set, as on some CI machines,
# nothing else would, and every test process would compile jax and numba from source (7 s each, not 2).

VENV      := .venv
PY        := $(VENV)/bin/python
HOST      ?= 127.0.0.1
HTTP_PORT ?= 8000
GRPC_PORT ?= 50051
# test processes (pytest-xdist); each test file runs whole in one of them, so its module fixtures are made once.
# Two more than the cores: many tests wait (on a server, a browser, a compile worker), and on a shared machine
# the scheduler gives each runnable process its share (beside one CPU hog on 2 cores, 4 runnable processes get
# 1.6 cores, 3 get 1.5), so the extra ones keep the suite's share of the CPU up.
TEST_WORKERS ?= $(shell echo $$(( $$(nproc 2>/dev/null || echo 2) + 2 )))
PYTEST    := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

.PHONY: run test test-fast bench image-test clean

run: $(VENV)/.installed
	$(VENV)/bin/adserve --host $(HOST) --http-port $(HTTP_PORT) --grpc-port $(GRPC_PORT)

# the system packages (apt on a new machine: mostly downloads) install while pip does: a fresh clone's minutes
test: | $(PY)
	bash scripts/install-system-deps.sh & deps=$$!; \
	$(MAKE) -s --no-print-directory $(VENV)/.installed-test; made=$$?; wait $$deps; exit $$made
	@# where PYTHONDONTWRITEBYTECODE is set, nothing else writes these, and every server, worker and test process
	@# the suite starts (hundreds) would compile adserve's modules from source (0.13 s of CPU each)
	$(PY) -m compileall -q -q adserve tests clients/python
	$(PYTEST)

# the engine and the service in process, without numba compiles: the edit-and-check loop (under two minutes)
test-fast: $(VENV)/.installed-test
	$(PYTEST) -m "not e2e and not compiled"

# adserve against JAX and autograd, one run (a few minutes; longer while kernels compile the first time): writes docs/benchmarks.md and .png
bench: $(VENV)/.installed-bench
	$(PY) -m bench

# builds the container image with podman and checks it serves the survey example (minutes; not in CI)
image-test:
	bash deploy/test-image.sh

$(PY):
	python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e .
	touch $@

# the test extras include everything `run` needs, so they satisfy its stamp too; the tests use the Python client
$(VENV)/.installed-test: pyproject.toml clients/python/pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[test]' -e clients/python
	touch $@ $(VENV)/.installed

$(VENV)/.installed-bench: pyproject.toml | $(PY)
	$(PY) -m pip install -q -e '.[bench]'
	touch $@ $(VENV)/.installed

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache .hypothesis
