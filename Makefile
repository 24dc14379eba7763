# One command each: `make demo` runs the main job, `make test` passes the tests.
.PHONY: setup test demo lint

setup:
	./scripts/setup.sh

test:
	./scripts/test.sh

demo:
	./scripts/demo.sh

lint: setup
	.venv/bin/ruff check trainer service loadtest bench tests
