# Two commands do all set-up on a fresh machine:
#   make demo   trains on the flowers data (DATA=...) and names a few of its valid photos
#   make test   runs the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DATA ?= ../shared/data/flowers102
RUN ?= runs/flowers
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch and torchvision are pinned: these versions install from local disk on the project's machines.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flowerid train $(DATA) --save-dir $(RUN)
	$(BIN)/flowerid predict $$(ls -d $(DATA)/valid/*/ | head -n 4 | while read d; do ls "$$d"* | head -n 1; done) \
		--checkpoint $(RUN)/checkpoint.pth --top-k 3

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_train.py --data $(DATA)
	$(BIN)/python benchmarks/bench_speed.py --data $(DATA)

clean:
	rm -rf $(VENV) runs .pytest_cache .ruff_cache
