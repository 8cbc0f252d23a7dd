# Two commands on a fresh machine; both set up .venv/ themselves.
#   make serve   run the Label Studio ML backend on port 9090 (models from MODEL_DIR, default models/)
#   make test    run the test suite

#   make lock       write requirements/*.txt anew after a change to what they are made from
#   make upgrades   the suite with the newest versions allowed, and what moved (.upgrades/)

.PHONY: setup setup-tests serve demo test lint lock upgrades

setup:
	@bash scripts/bootstrap.sh

setup-tests:
	@bash scripts/bootstrap.sh --tests

serve: setup
	.venv/bin/camsam serve --model-dir $${MODEL_DIR:-models}

demo: setup
	.venv/bin/camsam demo --out demo

test: setup-tests
	.venv/bin/python -m pytest -q -p no:cacheprovider tests

lint: setup-tests
	.venv/bin/ruff check worker ml_backend tests
	.venv/bin/ruff format --check worker ml_backend tests

lock:
	@bash scripts/lock.sh

upgrades:
	@bash scripts/upgrades.sh
