# The project's commands. `make demo` runs the main job, `make test` runs every test.
SHELL := /bin/bash
.DEFAULT_GOAL := help
CARGO ?= cargo
# Rust build output is cached outside the clone (like the Go, Maven and testbed caches),
# so a fresh clone builds warm. Override with CARGO_TARGET_DIR=target for a local one.
export CARGO_TARGET_DIR ?= $(HOME)/.cache/outbox-operator/target
TESTBED_ENV := .testbed/env

.PHONY: help deps testbed-build testbed-up testbed-down testbed-images test test-unit test-scripts test-rules monitor lint fmt crds crds-check chart-check chart-values-check demo bench bench-check chaos

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'

deps: ## install the Debian packages the build and the testbed need (only what is missing)
	.ci/install-deps.sh

testbed-build: ## build or fetch every testbed component into the cache (no processes)
	testbed/build.sh

testbed-up: ## start the control plane, Kafka, PostgreSQL and the node (kubelet, containerd); write .testbed/env
	testbed/up.sh

testbed-down: ## stop every testbed process, undo the node's host changes, remove .testbed/
	testbed/down.sh

PROFILE ?= debug
testbed-images: ## build the operator and worker images (PROFILE=debug|release) and import them into the node
	$(CARGO) build $(if $(filter release,$(PROFILE)),--release) -p outbox-operator -p outbox-workers --bins
	testbed/load-images.sh "$(CARGO_TARGET_DIR)/$(PROFILE)"

CHAOS_TABLE := $(CARGO_TARGET_DIR)/tmp/chaos-table.md

test: deps test-scripts test-rules ## the script tests, the alert rules' tests, then all tests on the real testbed, then the kind quick start on its node (kind-check): brings it up, runs them, takes it down again
	@rm -f "$(CHAOS_TABLE)"
	@testbed/with-testbed.sh bash -c 'testbed/chart-check.sh && $(CARGO) build --workspace --bins && \
	  testbed/load-images.sh "$(CARGO_TARGET_DIR)/debug" || exit 1; \
	  $(CARGO) test --workspace --no-fail-fast; tests=$$?; testbed/kind-check.sh; kind=$$?; \
	  echo "cargo test: exit $$tests; kind quick start (testbed/kind-check.sh): exit $$kind"; \
	  [ $$tests = 0 ] && [ $$kind = 0 ]'; \
	  status=$$?; [ -f "$(CHAOS_TABLE)" ] && { echo "fault matrix (sample):"; cat "$(CHAOS_TABLE)"; }; exit $$status

CHAOS_FAULTS ?= all
CHAOS_MESSAGES ?= 200000
chaos: deps ## the fault matrix: a LoadTest per fault and phase on the testbed's node, one table (CHAOS_FAULTS=all: about 27 min)
	@rm -f "$(CHAOS_TABLE)"
	@testbed/with-testbed.sh bash -c '$(CARGO) build --workspace --bins && \
	  testbed/load-images.sh "$(CARGO_TARGET_DIR)/debug" && \
	  CHAOS_FAULTS="$(CHAOS_FAULTS)" CHAOS_MESSAGES="$(CHAOS_MESSAGES)" $(CARGO) test -p outbox-operator --test chaos_on_testbed -- --nocapture'; \
	  status=$$?; [ -f "$(CHAOS_TABLE)" ] && cat "$(CHAOS_TABLE)"; exit $$status

test-unit: test-scripts ## unit tests only (no testbed needed), the script tests too
	$(CARGO) test --workspace --lib --bins

test-scripts: ## the scripts' own tests (testbed/tests/*-test.sh, the structure and dashboard checks' self-tests: seconds, no root, no testbed)
	@for t in testbed/tests/*-test.sh; do echo "== $$t"; bash "$$t" || exit 1; done
	@echo "== scripts/structure-check.py --self-test"; scripts/structure-check.py --self-test
	@echo "== scripts/dashboard-check-test.sh"; bash scripts/dashboard-check-test.sh

fmt: ## format the Rust code
	$(CARGO) fmt --all

crds: ## regenerate crds/ from the Rust types and copy them into the chart
	$(CARGO) run -q -p outbox-operator --bin crdgen -- crds
	cp crds/*.yaml charts/outbox-operator/crds/

crds-check: ## fail when crds/ or the chart's copy differ from what crdgen writes
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	$(CARGO) run -q -p outbox-operator --bin crdgen -- $$tmp >/dev/null && \
	diff -ru $$tmp crds && diff -ru crds charts/outbox-operator/crds && \
	echo "crds/ and charts/outbox-operator/crds/ match crdgen's output"

chart-check: ## helm lint, and the rendered chart validated by the testbed's v1.33 API server
	@testbed/with-testbed.sh testbed/chart-check.sh

chart-values-check: ## what the chart's values render (helm template only, no testbed)
	@testbed/chart-values-check.sh

SHELL_SCRIPTS := testbed/*.sh testbed/monitor/*.sh testbed/node/*.sh testbed/tests/*.sh scripts/*.sh .ci/run .ci/install-deps.sh
lint: deps ## rustfmt, clippy -D warnings, CRD drift, shellcheck, file and function sizes, the Grafana dashboards, dependency licenses and sources
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(MAKE) --no-print-directory crds-check
	shellcheck -x -P SCRIPTDIR --severity=warning $(SHELL_SCRIPTS)
	scripts/structure-check.py
	scripts/dashboard-check.py
	$(CARGO) deny --log-level error check licenses bans sources

# ------------------------------------------------------------------ images and kind
VERSION ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
OPERATOR_IMAGE ?= ghcr.io/outbox-dev/outbox-operator:$(VERSION)
WORKER_IMAGE ?= ghcr.io/outbox-dev/outbox-worker:$(VERSION)
KIND_CLUSTER ?= outbox

.PHONY: images kind-up kind-dev kind-load kind-chart kind-install kind-check
images: ## build the operator and worker images (needs a Docker engine)
	docker build -f operator/Dockerfile -t $(OPERATOR_IMAGE) .
	docker build -f workers/Dockerfile -t $(WORKER_IMAGE) .

kind-up: ## create the kind cluster from manifests/kind/cluster.yaml with dev Kafka and PostgreSQL
	kind create cluster --config manifests/kind/cluster.yaml
	$(MAKE) --no-print-directory kind-dev

kind-dev: ## apply the dev Kafka and PostgreSQL (manifests/kind/) to the current cluster and wait for them
	kubectl apply -f manifests/kind/postgres.yaml -f manifests/kind/kafka.yaml
	kubectl rollout status deployment/outbox-postgres --timeout=5m
	kubectl rollout status deployment/outbox-kafka --timeout=5m

kind-load: images ## load both images into the kind cluster
	kind load docker-image --name $(KIND_CLUSTER) $(OPERATOR_IMAGE) $(WORKER_IMAGE)

kind-install: kind-load ## helm install the chart into the kind cluster
	$(MAKE) --no-print-directory kind-chart

kind-chart: ## helm install the chart into outbox-system of the current cluster, as kind-install does
	helm upgrade --install outbox-operator charts/outbox-operator --namespace outbox-system --create-namespace \
	  --set loadtest.namespaces='{default}' --wait

kind-check: deps ## the kind quick start on the testbed's node (all but kind create, docker build, kind load), small LoadTest Verified
	$(CARGO) build -p outbox-operator -p outbox-workers --bins
	@testbed/with-testbed.sh bash -c 'testbed/load-images.sh "$(CARGO_TARGET_DIR)/debug" && testbed/kind-check.sh'

BENCH_MESSAGES ?= 1000000
BENCH_ROUNDS ?= 3
BENCH_BASELINE ?= workers/bench-baseline.json
BENCH_RUN = "$${CARGO_TARGET_DIR:-target}/release/outbox-worker" bench \
	  --messages $(BENCH_MESSAGES) --rounds $(BENCH_ROUNDS) --baseline "$(CURDIR)/$(BENCH_BASELINE)" \
	  --report "$${TESTBED_STATE_DIR}/bench-report.json"
bench: ## workers benchmark: raw COPY / produce / consume baselines beside ingest, relay, consume, end to end (median of rounds; keeps the figures in BENCH_BASELINE)
	$(CARGO) build --release -p outbox-workers --bin outbox-worker
	@testbed/with-testbed.sh bash -c '$(BENCH_RUN) --update-baseline && \
	  cp "$${TESTBED_STATE_DIR}/bench-report.json" bench-report.json'

bench-check: ## the benchmark, failing when a ratio fell more than the tolerance (20 %) below BENCH_BASELINE
	$(CARGO) build --release -p outbox-workers --bin outbox-worker
	@testbed/with-testbed.sh bash -c '$(BENCH_RUN) --check && \
	  cp "$${TESTBED_STATE_DIR}/bench-report.json" bench-report.json'

monitor: deps ## the quick demo with a real Prometheus scraping it and the chart's alerts loaded; leaves it all running (Prometheus' address at the end)
	MONITOR=1 KEEP=1 LOADTEST=$${LOADTEST:-manifests/loadtest-small.yaml} scripts/demo.sh

test-rules: ## promtool tests of every alert rule of the chart (no cluster)
	@testbed/monitor/test-rules.sh

demo: deps ## the main job: testbed up, chart installed, reference OutboxSystem + LoadTest run and verified
	scripts/demo.sh
