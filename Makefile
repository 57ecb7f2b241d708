# Set-up, demo and tests. Works on a fresh Debian/Ubuntu machine with Python >= 3.10,
# PyPI reachable and (for the demo's offline data) Debian's package archive reachable.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= runs/demo
FASHION_DEB := /usr/share/datasets/fashion-mnist

.PHONY: install demo test fashion-mnist bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $@

# Fashion-MNIST for offline use, from Debian's dataset-fashion-mnist package.
fashion-mnist:
	@if [ ! -d $(FASHION_DEB) ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq dataset-fashion-mnist; \
	fi

# The main job end to end: the shipped pre-trained LeNet-5 on Fashion-MNIST, one epoch of
# switch learning, pruning to 6-8-40-20, fine-tuning; report in $(DEMO_OUT)/report.json.
demo: install fashion-mnist
	$(VENV)/bin/dirichlet-prune prune --model lenet5 --dataset fashion-mnist \
	  --arch 6-8-40-20 --out $(DEMO_OUT) --overwrite

test: install
	$(PY) -m pytest -q

bench: install
	$(PY) benchmarks/svi_step.py

clean:
	rm -rf $(VENV) runs .pytest_cache
