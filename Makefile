# ytcaption: the two commands a new user needs are `make demo` and `make test`.
# Both install what is missing (models, ONNX Runtime, test audio) and build what is stale.

CARGO ?= cargo
MODELS ?= base tiny.en
BIN := target/release/ytcaption
SAMPLE_TEXT := Self hosted transcription turns long recordings into searchable text and captions.

.PHONY: demo test model fixtures test-env build lint bench fuzz clean-fixtures

## The main job on a bundled sample: a human clip and a spoken sentence, as text and SRT.
demo: model build
	@mkdir -p target/demo
	@espeak-ng -v en-us -s 150 -w target/demo/sentence.wav "$(SAMPLE_TEXT)" 2>/dev/null || { echo "demo: espeak-ng is missing: apt-get install espeak-ng" >&2; exit 1; }
	@echo "== beckett.wav (human speech), text:"; $(BIN) transcribe tests/fixtures/generated/beckett.wav --format txt
	@echo "== beckett.wav, SRT:"; $(BIN) transcribe tests/fixtures/generated/beckett.wav --format srt
	@echo "== espeak-ng sentence (\"$(SAMPLE_TEXT)\"), SRT:"; $(BIN) transcribe target/demo/sentence.wav --format srt --stats

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
