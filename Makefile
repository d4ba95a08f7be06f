# The first command on a fresh machine (after `pip install -e .`): docs/DEMO.md
PYTHON ?= python3

.PHONY: demo test

demo:
	$(PYTHON) -m launch.demo --out demo_run

test:
	$(PYTHON) -m pytest -q
