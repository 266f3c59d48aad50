# Kraken: P2P Docker/OCI registry. `make devcluster` starts the cluster; `make test` runs every test.
#
#   make install          .venv with the project and its test extra (re-run only when pyproject.toml changes)
#   make system-deps      the Debian packages the real-client tests drive (as root; apt-get only if missing)
#   make test             both of the above, then lint, then the whole suite (PYTEST_ARGS="-k foo" to narrow it)
#   make lint             ruff (kraken, tests, bench) and mypy (kraken), as configured in pyproject.toml
#   make unit-test        tests/unit alone: in-process tests, no subprocess, well under a minute
#   make devcluster       the devcluster: Docker containers when a daemon answers (make docker_stop
#                         removes them), else local processes (Ctrl-C stops them)
#   make devcluster-stop  stop it from another shell (either mode)
#   make images           the kraken-herd and kraken-agent images (BASE_IMAGE=... to pick the base;
#                         WHEELS_DIR=DIR on a host without a package index, see docker/build-images.sh)
#   make base-image       kraken-base:bookworm from Debian packages alone (root, debootstrap; offline hosts)
#   make docker_stop      remove the devcluster's containers
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVCLUSTER_DIR ?= /tmp/kraken-devcluster
PYTEST_ARGS ?=

# bash with pipefail: a pipeline fails when any part of it fails (the pip output filter below).
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -ec

# The machine's pip config lists local package directories that hold only some projects; pip
# warns once for each project missing there. Those lines are noise: drop them, keep the rest.
PIP_NOISE := is ignored: it is neither a file nor a directory
PIP := PIP_DISABLE_PIP_VERSION_CHECK=1 $(PY) -m pip

.PHONY: install system-deps lint test unit-test devcluster devcluster-stop images base-image docker_stop bench clean

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
	  echo "make: $(PYTHON) is not Python >= 3.11 (found: $$($(PYTHON) --version 2>&1)); run make PYTHON=python3.11 ..." >&2; exit 1; }
	@$(PYTHON) -c 'import venv, ensurepip' 2>/dev/null || { \
	  echo "make: $(PYTHON) cannot create virtual environments (no venv/ensurepip module)." >&2; \
	  echo "      On Debian: apt-get install python3-venv (or use a pyenv Python: make PYTHON=...)" >&2; exit 1; }
	@[ -x $(PY) ] && $(PY) -c '' 2>/dev/null || { echo "creating $(VENV) with $$($(PYTHON) --version)"; \
	  rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	@echo "installing the project and its test dependencies into $(VENV)"
	@$(PIP) install -q -e '.[test]' 2>&1 | { grep -v -- '$(PIP_NOISE)' || true; }
	@touch $(STAMP)

install: $(STAMP)

# System packages the end-to-end tests drive (docker.io, skopeo, docker-registry, ...): installs
# only what is missing, so it takes well under a second when everything is there.
system-deps:
	@bash scripts/install-system-deps.sh

# pytest exits 5 when it collected no test (e.g. PYTEST_ARGS="-k nomatch"): report it, don't fail.
# The rule sets and options are in pyproject.toml ([tool.ruff], [tool.mypy]).
lint: install
	$(VENV)/bin/ruff check kraken tests bench examples scripts docker
	$(VENV)/bin/mypy

test: install system-deps lint
	@rc=0; $(PY) -m pytest -q -p no:cacheprovider --durations=15 $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests"; rc=0; fi; exit $$rc

unit-test: install
	@rc=0; $(PY) -m pytest -q -p no:cacheprovider tests/unit $(PYTEST_ARGS) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make unit-test: pytest collected no tests"; rc=0; fi; exit $$rc

devcluster: install
	$(PY) -m kraken.devcluster start --workdir $(DEVCLUSTER_DIR) $(if $(filter-out 0,$(KRAKEN_TLS)),--tls)

# Needs no installed dependency: works with the system python3 too.
devcluster-stop:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m kraken.devcluster stop --workdir $(DEVCLUSTER_DIR)

# The images install the project from wheels built here (docker/build-images.sh), from the
# package index or, on an air-gapped host, from WHEELS_DIR (exported: a command-line variable).
images: install
	PYTHON=$(PY) bash docker/build-images.sh

base-image:
	bash docker/base-image.sh

docker_stop:
	@$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m kraken.devcluster stop --docker --workdir $(DEVCLUSTER_DIR)

# BENCH_ARGS: benchmark names and options, e.g. make bench BENCH_ARGS="push-tls" (push over TLS); by default the
# reduced set (under 10 minutes), BENCH_ARGS=--full for every benchmark at full size and the fan-out's full grid
bench: install system-deps
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
