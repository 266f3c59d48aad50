# Kraken: P2P Docker/OCI registry. `make devcluster` starts the cluster; `make test` runs every test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEVCLUSTER_DIR ?= /tmp/kraken-devcluster

.PHONY: install system-deps test unit-test devcluster devcluster-stop bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# System packages the end-to-end tests drive (docker.io, skopeo, docker-registry, ...); needs root.
system-deps:
	bash scripts/install-system-deps.sh

test: install system-deps
	$(PY) -m pytest -q -p no:cacheprovider --durations=15

unit-test: install
	$(PY) -m pytest -q -p no:cacheprovider -m "not realclients"

devcluster: install
	$(PY) -m kraken.devcluster start --workdir $(DEVCLUSTER_DIR)

devcluster-stop:
	$(PY) -m kraken.devcluster stop --workdir $(DEVCLUSTER_DIR)

bench: install system-deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info
