# ytcaption: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing (models, ONNX Runtime, test audio) and build what is stale.

CARGO ?= cargo
MODELS ?= base tiny.en
BIN := target/release/ytcaption

.PHONY: demo test model fixtures test-env build lint bench bench-node bench-cluster fuzz clean-fixtures

## The main job on the embedded defaults: start a node, transcribe bundled samples through its
## HTTP API (upload, wait, print as text and SRT), stop the node.
demo: model build
	deploy/demo.sh

## Everything the tests need, then every test of the workspace (unit, integration, end to end).
test: model build fixtures
	$(CARGO) test --release --workspace

model:
	deploy/model/install.sh $(MODELS)

fixtures: test-env
	tests/fixtures/make.sh

test-env:
	deploy/test-env/install.sh


build:
	$(CARGO) build --release -p ytcaption

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

## Speed and memory against faster-whisper (not part of the tests).
bench: model build
	deploy/bench/transcribe.sh

## Node figures: durable submissions/s with wrk, orchestration overhead, idle RSS.
bench-node: model build fixtures
	deploy/bench/node.sh

## Cluster figures: cross-node dispatch overhead, crash and hang detection, takeover time.
bench-cluster: model build fixtures
	python3 deploy/bench/cluster.py
