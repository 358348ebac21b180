# Lanyard's entry points. `make run` and `make test` are the README's quick start.
CARGO ?= cargo

.PHONY: run cluster test lint deny fuzz demo demo-device demo-hosted demo-fastapi deps test-deps bench crash

## Set up and run the daemon with a local nats-server and the dev identity provider.
run:
	scripts/dev.sh

## Three nats-server nodes with JetStream and three daemons sharing the JetStream store.
cluster:
	scripts/cluster.sh

## Set up and run the whole test suite (what .ci/run runs): the Python client's checks
## against the daemon just built, everything Rust on the sled store, then the integration
## suite again on the JetStream store (a nats-server 2.10+ is installed for it when the
## system's is older).
test: test-deps
	$(CARGO) build --workspace
	scripts/python-tests.sh
	JETSTREAM_NATS_SERVER=$$(scripts/jetstream-server.sh) $(CARGO) test --workspace
	NATS_SERVER=$$(scripts/jetstream-server.sh) STORE_UNDER_TEST=jetstream $(CARGO) test -p lanyard-tests

## Formatting and lints, as CI checks them.
lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Dependency policy (deny.toml): licences, bans, sources; RustSec advisories when online.
deny: deps
	scripts/deny.sh

## A whole login against a running `make run`, step by step.
demo:
	$(CARGO) run -q -p lanyard-tests --example login

## A device-flow login against a running `make run`: prints a code and a URL, and waits
## (DEMO_ARGS=--approve plays the user too).
demo-device:
	$(CARGO) run -q -p lanyard-tests --example device -- $(DEMO_ARGS)

## A login through Lanyard's hosted pages against a running `make run`: prints the page to
## open, and waits (DEMO_ARGS=--approve plays the browser too).
demo-hosted:
	$(CARGO) run -q -p lanyard-tests --example hosted -- $(DEMO_ARGS)

## The Python client's FastAPI example against a running `make run`: open
## http://localhost:3000/login/dev?next=/me (clients/python/README.md).
demo-fastapi:
	cd clients/python && "$$(../../scripts/python-env.sh)/bin/python" examples/fastapi_app.py

deps:
	scripts/install-deps.sh

## What the tests need besides: headless Chromium for the browser tests.
test-deps:
	scripts/install-deps.sh --tests

## The benchmark: release daemon, scenarios over NATS, ratios to a NATS echo baseline.
## Prints a table and writes target/bench/results.json (see PERFORMANCE.md).
bench: deps
	$(CARGO) build --release -p lanyard -p lanyard-provider-oidc -p lanyard-provider-github -p lanyard-bench
	JETSTREAM_NATS_SERVER=$$(scripts/jetstream-server.sh) $(CARGO) run -q --release -p lanyard-bench -- $(BENCH_ARGS)

# kill -9 under load: SIGKILLs during logins; every answered login must survive.
crash: deps
	$(CARGO) build --release -p lanyard -p lanyard-provider-oidc -p lanyard-bench
	$(CARGO) run -q --release -p lanyard-bench -- crash $(CRASH_ARGS)

# The property tests with a long budget (RELIABILITY.md records the figures).
FUZZ_CASES ?= 50000
fuzz: deps
	$(CARGO) build --workspace
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test -p lanyard-tests --test it properties::no_plugin -- --nocapture
	PROPTEST_CASES=$$(( $(FUZZ_CASES) / 5 * 2 )) $(CARGO) test -p lanyard-tests --test it properties::every_command -- --nocapture
