# snapgroup — the commands the README shows, and the same ones CI runs.
PYTHON ?= python3
STATE ?= $(CURDIR)/.localcluster
export PYTHONPATH := $(CURDIR)/tests$(if $(PYTHONPATH),:$(PYTHONPATH))

.PHONY: help install binaries test check lint typecheck layers crds crds-check hadolint go-test pytest \
        cluster-up cluster-down demo bench bench-record bench-restore chaos

help:
	@echo "make demo          local cluster + bleater sample + operator + one SnapshotGroup, then its status"
	@echo "make test          every check and test (lint, types, layers, CRD drift, unit, cluster, e2e)"
	@echo "make cluster-up    start the local cluster with the bleater sample; cluster-down stops it"
	@echo "make bench         freeze-window and scale benchmarks, report under docs/benchmarks/"
	@echo "make bench-record  the MinIO/S3 record read on 100,000 objects, docs/benchmarks/record-read.md"
	@echo "make bench-restore restore time of the bleater sample (clone, in place, verification), docs/benchmarks/restore.md"
	@echo "make chaos         30+ groups with one random fault each, report under docs/chaos/ (SEED=N)"

install:
	$(PYTHON) -m pip install --quiet --disable-pip-version-check -e '.[dev]'

binaries: install
	$(PYTHON) -m localcluster build

check: lint typecheck layers crds-check hadolint go-test

lint:
	ruff check operator tests

typecheck:
	mypy

layers:
	lint-imports

crds:
	$(PYTHON) -m snapgroup crd -d crds

crds-check:
	$(PYTHON) -m snapgroup crd --check -d crds

hadolint:
	hadolint Dockerfile

# The local cluster's own Go code: the hostpath CSI driver and the S3 server.
go-test:
	cd tests/localcluster/go/controlplane && go vet ./cmd/... && go test ./cmd/...
	cd tests/localcluster/go/services && go vet ./cmd/... && go test ./cmd/...

# pytest exits 5 when it collects nothing (e.g. a filtered run): say so instead of failing.
pytest: binaries
	$(PYTHON) -m pytest -q -ra $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 0; fi; exit $$rc

test: install check pytest

cluster-up: binaries
	$(PYTHON) -m localcluster up --with-bleater --state-dir $(STATE)

cluster-down:
	$(PYTHON) -m localcluster down --state-dir $(STATE)

demo: binaries
	STATE=$(STATE) PYTHON=$(PYTHON) bash hack/demo.sh

bench: binaries
	$(PYTHON) -m benchmarks --report docs/benchmarks

# The MinIO/S3 newest-record read on a bucket of 100,000 objects (the S3 stand-in only, no cluster).
bench-record: install
	PYTHONPATH=$(CURDIR)/operator:$(PYTHONPATH) $(PYTHON) -m benchmarks.record_read --objects 100000 --report docs/benchmarks
# Restore time of the bleater sample, clone and in place, the writer's stop, and verification by
# restoring (docs/benchmarks/restore.md).
bench-restore: binaries
	$(PYTHON) -m benchmarks.restore --report docs/benchmarks
# Outside `make test`: groups back to back, each with one random fault (tests/chaos/).
GROUPS ?= 30
chaos: binaries
	$(PYTHON) -m chaos --groups $(GROUPS) --report docs/chaos $(if $(SEED),--seed $(SEED))
