# Two commands: `make run` (the DAG on the embedded corpus) and `make test`.
# Both create .venv and install the pinned requirements when it is missing or stale.
VENV ?= .venv
PY := $(VENV)/bin/python
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed

.PHONY: install run test test-slow bench bench-real pretrain-musetok lint bench-scale

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

run: install
	PATH="$(BIN):$$PATH" dvc repro

# One pytest-xdist worker per core (4 at most), a test file's tests on one worker (they share
# module fixtures); tests/conftest.py starts the DVC workflow first and splits torch's threads.
test: install
	PATH="$(BIN):$$PATH" $(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile

test-slow: install
	PATH="$(BIN):$$PATH" $(PY) -m pytest -m slow

bench: install
	@for b in benchmarks/bench_*.py; do case $$b in */bench_real.py|*/bench_conditioning.py|*/bench_corpus_scale.py) continue;; esac; PATH="$(BIN):$$PATH" $(PY) $$b || exit 1; done

# The corpus at scale (README, "Corpus store"): 10k and 100k synthetic files from
# ../shared/datasets through organize, tokenize and a generator epoch with DVC (~25 min on 2 cores)
bench-scale: install
	PATH="$(BIN):$$PATH" $(PY) benchmarks/bench_corpus_scale.py

# The real-data suite (README, "Real-data benchmarks"): one JSON line per task; the corpora
# come from MIDIPIPE_EXTERNAL_DATA (default ../shared/datasets). BENCH_REAL_ARGS="--tasks emopia"
bench-real: install
	PATH="$(BIN):$$PATH" $(PY) benchmarks/bench_real.py $(BENCH_REAL_ARGS)

# MuseTok pre-trained on the corpora of ../shared/datasets (params.yaml `pretrain_musetok:`)
# into models/pretrained/musetok (gitignored); musetok.init_from / checkpoint can name it.
pretrain-musetok: install
	PATH="$(BIN):$$PATH" nice -n 10 $(PY) -m midipipe.musetok.pretrain

lint: install
	$(BIN)/ruff check src stages tests benchmarks
	$(BIN)/ruff format --check src stages tests benchmarks
