# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv when missing, install the package (editable, with its dev extra) and the
# speech synthesisers espeak-ng, flite and festival with its voices (Debian packages, used to
# synthesise the offline corpus), then do their job.

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

# The synthesisers of `asr synth` (asr/data/synthetic.py ENGINE_PACKAGES) and the voices it uses,
# WordNet's database: the demo's training text (asr/data/synthetic.py WORDNET_DIR); and fortunes:
# English text for the generalisation benchmark's test (asr/data/synthetic.py FORTUNE_FILES).
SYNTH_PACKAGES := espeak-ng sox flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \
                  wordnet-base fortunes

espeak:
	@missing=$$(for p in $(SYNTH_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | \
	  grep -q "install ok installed" || echo $$p; done | tr '\n' ' '); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing $$missing with apt-get"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "speech synthesisers missing: install them with 'sudo apt-get install $$missing'" >&2; exit 1; \
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
