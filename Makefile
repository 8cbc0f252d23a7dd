# Two commands on a fresh machine; both set up .venv/ themselves.
#   make serve   run camsam (for now: the end-to-end demo on a synthetic dataset)
#   make test    run the test suite

.PHONY: setup serve test lint

setup:
	@bash scripts/bootstrap.sh

serve: setup
	.venv/bin/camsam demo --out demo

test: setup
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

lint: setup
	.venv/bin/ruff check worker ml_backend tests
	.venv/bin/ruff format --check worker ml_backend tests
