# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install the package (editable, with its dev extra) and
# espeak-ng (Debian package, used to synthesise the offline corpus), then do their job.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test lint setup espeak clean-demo

setup: $(STAMP) espeak

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]' 2>&1 | grep -v "^WARNING: Location" || true
	@$(BIN)/python -c "import asr, torch, torchaudio" || { echo "package install failed" >&2; exit 1; }
	@touch $(STAMP)

espeak:
	@if ! command -v espeak-ng >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing espeak-ng and sox with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng sox >/dev/null; \
	  else \
	    echo "espeak-ng is missing: install it with 'sudo apt-get install espeak-ng sox'" >&2; exit 1; \
	  fi; \
	fi

test: setup
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .

demo: setup
	PATH="$(CURDIR)/$(BIN):$$PATH" bash recipes/synthetic/run.sh

clean-demo:
	rm -rf recipes/synthetic/data recipes/synthetic/exp
