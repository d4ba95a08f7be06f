# The first command on a fresh machine (after `pip install -e .`): docs/DEMO.md
PYTHON ?= python3

.PHONY: demo test tiny-assets

demo:
	$(PYTHON) -m launch.demo --out demo_run

test:
	$(PYTHON) -m pytest -q

# the text model and shards that configs/tiny_*.json read (runs/tiny_assets/); docs/SLURM.md
tiny-assets:
	$(PYTHON) -m launch.tiny_assets
