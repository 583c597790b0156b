# The two commands the README shows first. Both run scripts/setup.sh (idempotent, fast when done).
.PHONY: setup demo test bench cifar10

setup:
	bash scripts/setup.sh

demo: setup
	bash scripts/demo.sh

test: setup
	bash scripts/get_cifar10.sh
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/python scripts/bench_compression.py

cifar10: setup
	bash scripts/cifar10_compare.sh $(EPOCHS)
