# Two commands set everything up on a fresh clone:  `make book`  and  `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
MATHJAX_VERSION := 3.2.2
MATHJAX := book/_static/mathjax/tex-mml-chtml.js
PROFILE ?= default
STAGE ?=
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: book test test-fast run stages html lab clean clean-all browser venv mathjax

# ---- set-up -------------------------------------------------------------------------------------------------
venv: $(STAMP)
$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	$(PY) -m pip check
	@touch $@

# MathJax is served from the book itself (the machines have no internet, and readers may not either).
mathjax: $(MATHJAX)
$(MATHJAX):
	@command -v npm >/dev/null || { echo "npm is needed once to vendor MathJax (apt-get install npm)"; exit 1; }
	@tmp=$$(mktemp -d) && (cd $$tmp && npm pack --silent mathjax@$(MATHJAX_VERSION) >/dev/null && tar xzf mathjax-$(MATHJAX_VERSION).tgz) \
	  && rm -rf book/_static/mathjax && mkdir -p book/_static/mathjax \
	  && cp -r $$tmp/package/es5/. book/_static/mathjax/ && rm -rf $$tmp
	@test -f $(MATHJAX) && echo "vendored mathjax@$(MATHJAX_VERSION) into book/_static/mathjax"

# Headless Chromium for the browser test (Debian packages).
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium + chromium-driver with apt"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	fi

# ---- the book -----------------------------------------------------------------------------------------------
book: venv mathjax stages html

stages: venv
	$(PY) -m sdlib run-all --profile $(PROFILE)

html: venv mathjax
	$(PY) -m sdlib build-html

run: venv
	@test -n "$(STAGE)" || { echo "usage: make run STAGE=NN_name PROFILE=smoke|default|full|real"; exit 2; }
	$(PY) -m sdlib run $(STAGE) --profile $(PROFILE)

# JupyterLab on the repository, kernels not headless (sdlib.runner.lab_command). LAB_ARGS go to `jupyter lab`, e.g.
# make lab LAB_ARGS="--no-browser --port=8899"; the browser test starts the same command.
lab: venv
	$(PY) -m sdlib lab $(LAB_ARGS)

# ---- tests --------------------------------------------------------------------------------------------------
# -v and unbuffered output: a CI log that is cut short still shows the last test that ran; SIGINT after 60 min
# makes pytest print where it was and its summary, well inside CI's 90 minutes.
test: venv mathjax browser
	PYTHONUNBUFFERED=1 timeout --signal=INT --kill-after=120 3600 $(PY) -m pytest -v -ra --durations=15 tests \
	  --nbval-lax --nbval-current-env --nbval-cell-timeout=900 notebooks

test-fast: venv
	$(PY) -m pytest -q -m "not slow"

# `clean` keeps the cached world data sets and trained models: they carry the fingerprint of the code that made them
# and are rebuilt by `make book` when that code changes (sdlib/fingerprint.py). `clean-all` removes them too, forcing a
# full rebuild (e.g. after upgrading torch or transformers, which the fingerprints do not cover).
DATA := $(or $(SDLIB_DATA_DIR),data)

clean:
	rm -rf _build book/stages/*.ipynb $(DATA)/results $(DATA)/failed $(DATA)/interim .pytest_cache

clean-all: clean
	rm -rf $(DATA)/world $(DATA)/models $(DATA)/dsec
