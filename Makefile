# Switchboard developer entry points. `make run` and `make test` are the two
# commands a newcomer needs; both work on a fresh Debian machine with only
# the Rust toolchain (scripts/install-test-deps.sh installs the rest).

CARGO ?= cargo
PYTHON ?= python3
LISTEN ?= 127.0.0.1:8080

.PHONY: run test test-js lint layers fmt build test-deps cluster cluster-down bench

# The one debug build that make run, make test and scripts/test-js.sh share:
# the whole workspace with every target, so the features of dependencies are
# unified the same way each time (a `-p` build, or one without the tests'
# dev-dependencies, resolves them differently and compiles the tree again).
# After make test, make run compiles nothing.
DEV_BUILD = $(CARGO) build --workspace --all-targets

## run: build and start one in-memory node on $(LISTEN); prints a dev token.
run:
	$(DEV_BUILD)
	LISTEN=$(LISTEN) scripts/dev-run.sh

## test: install what the tests need, then lint, check the layers and run
## every test: the Rust workspace, then the JS SDK (node tests, types,
## headless Chromium) and the admin UI (dist/ up to date, headless Chromium).
test: test-deps lint layers
	$(DEV_BUILD)
	$(CARGO) test --workspace --all-targets
	CARGO=$(CARGO) scripts/test-js.sh

## test-js: only the JS tests, the SDK's and the admin UI's (after make test-deps).
test-js:
	CARGO=$(CARGO) scripts/test-js.sh

test-deps:
	scripts/install-test-deps.sh

## bench: build release, start redis and gateway nodes, run the benchmark
## scenarios (a few minutes each) and print one table (docs/benchmarks.md).
bench:
	CARGO=$(CARGO) scripts/bench.sh

## lint: formatting and clippy, warnings are errors.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## layers: no import circles between the modules (or folders) of any crate
## of the workspace; the checker's own tests run first (python3, which
## make test-deps installs).
layers:
	$(PYTHON) scripts/check-layers-test.py
	$(PYTHON) scripts/check-layers.py

fmt:
	$(CARGO) fmt --all

build:
	$(CARGO) build --workspace --release

## cluster: redis-server, three nodes and nginx (ip_hash) as local processes,
## no Docker; prints the URL and a token; Ctrl-C stops them all. Release
## binaries, as deployed (its own build, apart from make run's debug one).
cluster:
	$(CARGO) build --release -p switchboard-gateway -p switchboard-client
	scripts/cluster.sh up

## cluster-down: stop whatever a cluster run left behind (pid files in target/cluster).
cluster-down:
	scripts/cluster.sh down
