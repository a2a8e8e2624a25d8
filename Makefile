# ytcaption: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing (models, ONNX Runtime, test audio) and build what is stale.

CARGO ?= cargo
MODELS ?= base tiny.en
BIN := target/release/ytcaption

.PHONY: demo test model fixtures test-env build lint bench bench-node bench-cluster bench-split chaos-smoke fuzz clean-fixtures

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

## Long media split across 1, 2 and 3 nodes: speed-up, WER, expected speed-up on separate machines.
bench-split: model build fixtures
	python3 deploy/bench/split.py

## Chaos: a short seeded random run (3 nodes, 15 jobs, 5 faults) and every scripted scenario
## of chaos/scenarios; reports in target/chaos/ (see chaos/README.md).
CHAOS = $${CARGO_TARGET_DIR:-target}/release/ytcaption-chaos
chaos-smoke: model build fixtures test-env
	$(CARGO) build --release -p ytcaption-chaos
	mkdir -p target/chaos
	failed=""; \
	rm -rf target/chaos/*-logs; \
	$(CHAOS) --nodes 3 --jobs 15 --faults 5 --seed 1 --report target/chaos/smoke.json \
		--keep-logs target/chaos/smoke-logs || failed="$$failed smoke"; \
	for s in $$(ls chaos/scenarios); do \
		$(CHAOS) --scenario $$s --seed 1 --report target/chaos/$$s.json \
			--keep-logs target/chaos/$$s-logs || failed="$$failed $$s"; \
	done; \
	if [ -n "$$failed" ]; then \
		for s in $$failed; do \
			echo "== $$s: the nodes' last warnings (all of it in target/chaos/$$s-logs/) =="; \
			for log in target/chaos/$$s-logs/*.log; do \
				grep -h " WARN \| ERROR " $$log | tail -n 15 | cut -c 1-300 | sed "s|^|$$(basename $$log .log) |"; \
			done; \
		done; \
		for s in $$failed; do \
			python3 -c 'import json, sys; r = json.load(open(sys.argv[1])); print(sys.argv[2] + ":", *r["violations"], sep="\n  ")' \
				target/chaos/$$s.json $$s || true; \
		done; \
		echo "chaos-smoke: FAILED:$$failed (reports in target/chaos/)"; exit 1; \
	fi; \
	echo "chaos-smoke: every run passed"
