# The two commands a fresh machine needs: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow lint clean-outputs

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch and torchvision are resolved together from the registry (timm needs torchvision).
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m dinoloc.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The tests marked slow (subprocess crashes, torchrun, the console-script pipeline, packaging): CI runs them too.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

lint: $(STAMP)
	$(BIN)/ruff check .

clean-outputs:
	find outputs -mindepth 1 ! -name .gitkeep -exec rm -rf {} +
