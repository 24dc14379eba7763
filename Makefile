# One command each: `make demo` runs the main job, `make test` passes the tests (what CI runs).
# `make test-fast` is the same without the tests marked slow, for iterating.
.PHONY: setup test test-fast demo lint

setup:
	./scripts/setup.sh

test:
	./scripts/test.sh

test-fast:
	./scripts/test.sh -m "not slow"

demo:
	./scripts/demo.sh

lint: setup
	.venv/bin/ruff check trainer service loadtest bench experiments tests
