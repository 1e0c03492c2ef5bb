# pharmafl: `make demo` runs the 10-site federated DAVIS job, `make test` the tests.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin

# The DAVIS/KIBA tidy tables beside the checkout are used as the data dir when present;
# otherwise $PHARMAFL_DATA (default ~/.cache/pharmafl, filled by `pharmafl data fetch`).
SHARED_DATA := $(firstword $(wildcard $(CURDIR)/../shared/data))
ifneq ($(SHARED_DATA),)
export PHARMAFL_DATA ?= $(abspath $(SHARED_DATA))
endif

.PHONY: help install lint format test demo demo-resume demo-dp demo-secure demo-sign explore bench clean

help:
	@echo "make demo    run the 10-site federated DAVIS demo (installs first)"
	@echo "make demo-dp the same under DP-SGD at every site (epsilon = 8 per site)"
	@echo "make demo-secure DP-SGD plus secure aggregation (the server sees only sums)"
	@echo "make demo-sign   after make demo: users, QA signs the report, regulator verifies the package"
	@echo "make explore after make demo: the read-only web explorer of the run (for QA and regulators)"
	@echo "make demo-resume continue a demo that was stopped midway (Ctrl-C, crash) from its last round"
	@echo "make test    run the test suite (installs first)"
	@echo "make lint    ruff format --check and ruff check (make format rewrites)"
	@echo "make bench   run the benchmarks in bench/"
	@echo "make install create .venv and install pharmafl with pinned dependencies"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# CPU torch first: an unpinned torch would pull a multi-GB CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# crypten's metadata requires the dead `sklearn` package: install it without deps;
	# its real runtime needs (onnx, onnxscript, omegaconf, pyyaml) are project deps.
	$(BIN)/python -m pip install -q --no-deps crypten==0.4.1
	touch $@

lint: install
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: install
	$(BIN)/python -m pytest -q

DEMO_OUT ?= runs/davis-10sites-$(shell date +%Y%m%d-%H%M%S)

# The demo's signing keys are encrypted under a throwaway passphrase unless you set your own.
demo: export PHARMAFL_KEY_PASSPHRASE ?= pharmafl-demo-passphrase-not-for-real-runs
demo: install
	$(BIN)/pharmafl run configs/davis-10sites.yaml --out $(DEMO_OUT)
	$(BIN)/pharmafl ledger verify $(DEMO_OUT)

# A demo stopped midway (Ctrl-C, a crash, a reboot) continues from its last completed round:
# `make demo-resume` takes the latest runs/davis-10sites-<date-time> (or DEMO_RUN=...).
demo-resume: export PHARMAFL_KEY_PASSPHRASE ?= pharmafl-demo-passphrase-not-for-real-runs
demo-resume: install
	@test -n "$(DEMO_RUN)" || { echo "no runs/davis-10sites-<date-time> run: run make demo first"; exit 1; }
	$(BIN)/pharmafl resume $(DEMO_RUN)
	$(BIN)/pharmafl ledger verify $(DEMO_RUN)

DEMO_DP_OUT ?= runs/davis-10sites-dp-$(shell date +%Y%m%d-%H%M%S)

demo-dp: export PHARMAFL_KEY_PASSPHRASE ?= pharmafl-demo-passphrase-not-for-real-runs
demo-dp: install
	$(BIN)/pharmafl run configs/davis-10sites-dp.yaml --out $(DEMO_DP_OUT)
	$(BIN)/pharmafl ledger verify $(DEMO_DP_OUT)

# After `make demo`: the README's Compliance walkthrough, non-interactively, with throwaway
# passwords (never reuse them). Users are created once per run.
# the latest demo run directory (one holding ledger.db: not demo-sign's -head.json or -evidence beside it)
DEMO_RUN ?= $(lastword $(sort $(patsubst %/ledger.db,%,$(wildcard runs/davis-10sites-2*/ledger.db))))
PF := $(BIN)/pharmafl

demo-sign: export PHARMAFL_KEY_PASSPHRASE ?= pharmafl-demo-passphrase-not-for-real-runs
demo-sign: install
	@test -n "$(DEMO_RUN)" || { echo "no runs/davis-10sites-<date-time> run: run make demo first"; exit 1; }
	PHARMAFL_NEW_PASSWORD=throwaway-Demo-A1 $(PF) users init $(DEMO_RUN) --admin ada --name "Ada Lovelace"
	PHARMAFL_PASSWORD=throwaway-Demo-A1 PHARMAFL_NEW_PASSWORD=temporary-Demo-Q1 \
	  $(PF) users create $(DEMO_RUN) --user ada --id quinn --name "Quinn Quality" --role qa
	PHARMAFL_PASSWORD=throwaway-Demo-A1 PHARMAFL_NEW_PASSWORD=temporary-Demo-R1 \
	  $(PF) users create $(DEMO_RUN) --user ada --id rita --name "Rita Regulator" --role regulator
	PHARMAFL_PASSWORD=temporary-Demo-Q1 PHARMAFL_NEW_PASSWORD=throwaway-Demo-Q2 $(PF) users passwd $(DEMO_RUN) --user quinn
	PHARMAFL_PASSWORD=temporary-Demo-R1 PHARMAFL_NEW_PASSWORD=throwaway-Demo-R2 $(PF) users passwd $(DEMO_RUN) --user rita
	PHARMAFL_PASSWORD=throwaway-Demo-Q2 $(PF) report $(DEMO_RUN) --user quinn --out $(DEMO_RUN)/reports/r1
	PHARMAFL_PASSWORD=throwaway-Demo-Q2 $(PF) sign $(DEMO_RUN)/reports/r1 --user quinn --meaning approved
	$(PF) ledger head $(DEMO_RUN) --out $(DEMO_RUN)-head.json
	PHARMAFL_PASSWORD=throwaway-Demo-R2 \
	  $(PF) evidence export $(DEMO_RUN) --user rita --report $(DEMO_RUN)/reports/r1 --out $(DEMO_RUN)-evidence
	$(BIN)/python -m pharmafl.audit.evidence $(DEMO_RUN)-evidence --trusted-head $(DEMO_RUN)-head.json
	@echo "browse it: make explore (serves $(DEMO_RUN)), or open $(DEMO_RUN)-evidence/explorer/index.html"

# the read-only web explorer of the latest demo run (prints the URL to open; Ctrl-C stops it)
explore: install
	@test -n "$(DEMO_RUN)" || { echo "no runs/davis-10sites-<date-time> run: run make demo first"; exit 1; }
	$(BIN)/pharmafl explore $(DEMO_RUN)

DEMO_SECURE_OUT ?= runs/davis-10sites-secure-$(shell date +%Y%m%d-%H%M%S)

demo-secure: export PHARMAFL_KEY_PASSPHRASE ?= pharmafl-demo-passphrase-not-for-real-runs
demo-secure: install
	$(BIN)/pharmafl run configs/davis-10sites-secure.yaml --out $(DEMO_SECURE_OUT)
	$(BIN)/pharmafl ledger verify $(DEMO_SECURE_OUT)

bench: install
	$(BIN)/python bench/centralized.py
	$(BIN)/python bench/federated.py accuracy
	$(BIN)/python bench/federated.py scale
	$(BIN)/python bench/federated.py nvflare
	$(BIN)/python bench/ledger.py
	$(BIN)/python bench/privacy.py steps
	$(BIN)/python bench/privacy.py utility
	$(BIN)/python bench/attacks.py
	$(BIN)/python bench/secure_agg.py
	$(BIN)/python bench/cli.py

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
