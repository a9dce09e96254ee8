# sscild: the only entry point. `make all` re-runs the whole study and renders the book;
# `make test` runs the tests. See README.md.
SHELL := /bin/bash
.DELETE_ON_ERROR:
.SUFFIXES:

# ---- what to run --------------------------------------------------------------------------
PROFILE   ?= cpu
DATA_ROOT ?= data
# the cohort folder; default (empty): the profile's built-in synthetic cohort, $(DATA_ROOT)/synthetic-<profile>
DATA      ?=
RESULTS   ?= results
BOOK_OUT  ?= book
LAUNCHER  ?= local
# ALLOW_CLINICAL_GAPS=1: run although clinical values or rows would be set aside (validation stops
# the run otherwise, naming each; the Data chapter then lists them)
ALLOW_CLINICAL_GAPS ?=
# which folds `make train` trains (default all), e.g. FOLDS="0 1" on one machine, "2 3" on another
FOLDS ?= $(ALL_FOLDS)
# SEED=N replaces the profile's seed (other fold splits, pretraining and training draws), to repeat the
# study; give each seed its own RESULTS folder (scripts/record_seeds.py collects the repeats). Only a SEED
# given on make's command line counts: a SEED that happens to be in the shell's environment does not.
ifeq ($(origin SEED),command line)
ifneq ($(strip $(SEED)),)
export SSCILD_SEED := $(strip $(SEED))
endif
endif
# STEPS=N: a token training budget (pretraining and every fold train N steps; nothing else changes),
# for a dry run of a profile at full size (scripts/paper_scale_dry_run.py); command line only, like SEED
ifeq ($(origin STEPS),command line)
ifneq ($(strip $(STEPS)),)
export SSCILD_STEPS := $(strip $(STEPS))
endif
endif
# REPO_URL=https://github.com/<you>/<repo>: the public repository the book's repository, edit and Binder
# buttons link to (default: the checkout's GitHub/GitLab `origin` remote; none: the buttons are left out)
ifeq ($(origin REPO_URL),command line)
export SSCILD_REPO_URL := $(strip $(REPO_URL))
endif
# threads of every step (default: chosen per step; a Slurm task exports SSCILD_THREADS = its CPUs)
ifeq ($(strip $(THREADS)),)
THREADS := $(strip $(SSCILD_THREADS))
endif

# ---- environment --------------------------------------------------------------------------
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
REQ_HASH := $(shell cat requirements.txt pyproject.toml 2>/dev/null | sha256sum | cut -c1-16)
# torch, installed before the rest at the version requirements.txt pins: TORCH_INDEX=auto (default)
# takes the CPU build from $(TORCH_CPU_INDEX) on Linux without an NVIDIA GPU (PyPI's Linux wheel
# pulls several GB of CUDA libraries) and PyPI's default build otherwise (CUDA on Linux with a GPU);
# TORCH_INDEX=cpu, TORCH_INDEX=pypi or an index URL (e.g. https://download.pytorch.org/whl/cu128)
# choose, and replace an installed torch of another build
TORCH_INDEX     ?= auto
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PIN := $(shell sed -n 's/^torch==\([^[:space:];#]*\).*/\1/p' requirements.txt)
STAMP  := $(VENV)/.installed-$(REQ_HASH)$(if $(filter-out auto,$(TORCH_INDEX)),-torch-$(notdir $(patsubst %/,%,$(TORCH_INDEX))))
# OpenMP threads sleep instead of spinning while they wait: spinning threads of two processes
# side by side take the cores from each other (measured: benchmarks/omp_wait_policy.json, made by
# scripts/bench_omp_wait.py); set it to ACTIVE to spin again
export OMP_WAIT_POLICY ?= PASSIVE
# another annotation scheme mapped onto the study's roles (JSON or a JSON file), e.g.
# LABEL_MAP='{"reticulation": "ef", "honeycombing": "ef", "consolidation": "ggo"}'
ifdef LABEL_MAP
export SSCILD_LABEL_MAP := $(LABEL_MAP)
endif

# ---- the run: resolved by the library (lib/sscild/context.py), not restated here -------------
# DATA (default: the built-in synthetic cohort), NUM_FOLDS (the profile's), RES
# (<results>/<cohort>/<profile>), COHORT, SSCILD_RESULTS, and how the folds share this machine: FOLD_JOBS folds at once with FOLD_THREADS threads each (on a CPU one
# thread per fold, as many folds as cores; with a GPU one fold at a time). FOLD_JOBS=1 THREADS=2
# trains one fold after the other on 2 threads; THREADS also sets the threads of every other step.
ifeq ($(origin NUM_FOLDS),command line)
$(error NUM_FOLDS is the profile's (lib/sscild/profiles.py): choose a PROFILE, or FOLDS="0 1" to train some folds)
endif
CTX_VARS := $(shell SSCILD_DATA_ROOT=$(abspath $(DATA_ROOT)) PYTHONPATH=lib $(PYTHON) -m sscild.context make --profile "$(PROFILE)" --data "$(DATA)" \
  --results "$(RESULTS)" --jobs "$(FOLD_JOBS)" --threads "$(THREADS)" || echo CTX_FAILED)
ifneq ($(filter CTX_FAILED,$(CTX_VARS)),)
$(error the run could not be resolved (message above): check PROFILE, DATA and RESULTS)
endif
$(foreach v,$(CTX_VARS),$(eval $(v)))
export SSCILD_RESULTS
ifneq ($(strip $(THREADS)),)
export SSCILD_THREADS := $(THREADS)
endif
ALL_FOLDS := $(shell seq 0 $$(( $(NUM_FOLDS) - 1 )))
NB     := $(RES)/notebooks
RUN    := $(PY) -m sscild.book.runner --run-dir $(RES) -p profile $(PROFILE) -p data_dir $(abspath $(DATA))
# folds train FOLD_JOBS at a time without `make -j` (an explicit -j wins), and the chapters run the
# same way, FOLD_JOBS at a time on FOLD_THREADS threads each (their predictions are the same on any
# number of threads); with one job at a time a chapter uses every core, and an explicit -j makes
# chapters take turns (the runner's --one-at-a-time lock)
ifeq ($(LAUNCHER),local)
ifneq ($(FOLD_JOBS),1)
MAKEFLAGS += -j$(FOLD_JOBS)
endif
endif
ifeq ($(FOLD_JOBS),1)
CHAPTER_RUN := $(RUN) --one-at-a-time
else
CHAPTER_RUN := SSCILD_THREADS=$(FOLD_THREADS) $(RUN)
endif

# ---- make follows the library: each chapter depends on the library files it imports -----------
# (.make/libdeps.mk: LIBDEPS_<chapter>, made by lib/sscild/book/deps.py and remade when a library file
# or a chapter source changes), so editing e.g. lib/sscild/evaluation/metrics.py re-runs the chapters
# that use it, and only those
LIBDEPS_MK := .make/libdeps.mk
$(LIBDEPS_MK): $(shell find lib/sscild -name '*.py') $(wildcard notebooks/*.py)
	@mkdir -p $(@D)
	@PYTHONPATH=lib $(PYTHON) -m sscild.book.deps notebooks > $@.tmp && mv $@.tmp $@
-include $(LIBDEPS_MK)

FOLD_NBS  := $(foreach k,$(ALL_FOLDS),$(RES)/fold_$(k)/training.ipynb)
TRAIN_NBS := $(foreach k,$(FOLDS),$(RES)/fold_$(k)/training.ipynb)
CHAPTERS  := 00_abstract 01_data 02_training 03_segmentation 04_clinical 05_reproducibility A2_real_ct
CHAPTER_NBS := $(foreach c,$(CHAPTERS),$(NB)/$(c).ipynb)
BOOK_SRC  := $(wildcard book/*.md book/_config.yml book/_toc.yml book/*.bib book/_static/*)
BOOK_HTML := $(BOOK_OUT)/_build/html/index.html

.PHONY: all setup data train evaluate correlate book test test-fast clean help

all: $(BOOK_HTML)

help:
	@echo "make all [PROFILE=cpu|smoke|paper] [DATA=/path/to/cohort]   run the study and build the book"
	@echo "make test                                                  run the tests (unit + end-to-end smoke)"
	@echo "make setup | data | train | evaluate | correlate | book | clean"
	@echo "  TORCH_INDEX=auto|cpu|pypi|URL   which torch build setup installs (auto: CPU build without an NVIDIA GPU)"
	@echo "make fold-K                                                train one fold"
	@echo "  FOLD_JOBS=N THREADS=N   folds at once / threads per step (default: chosen for this machine)"
	@echo "  ALLOW_CLINICAL_GAPS=1   run although clinical values or rows would be set aside (listed in the Data chapter)"
	@echo "make publish [PUSH=1 REMOTE=origin]                        put the built book on the gh-pages branch"
	@echo "make external [EXTERNAL_TEST=DIR]                          appendix: same recipe on real CT slices (COVID-SemiSeg)"
	@echo "make lab                                                   JupyterLab on the chapters (jupytext)"
	@echo "make train LAUNCHER=slurm [SLURM_GRES=gpu:1 ...]             folds as one Slurm job array (README: Slurm)"

# ---- set-up: .venv keyed on the requirements' hash (a second run installs nothing) ----------
setup: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@$(TORCH_STEP)
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	@rm -f $(VENV)/.installed-*
	@touch $@

# The torch step of set-up (one shell line): which build, and why, in one line. A build from an index
# other than PyPI is installed without its dependencies, which `pip install -r requirements.txt` then
# installs from PyPI, so that index only has to serve torch. In auto mode an unreachable CPU index (or
# one without a wheel for this Python) falls back to PyPI, saying so.
define TORCH_STEP
pin='$(TORCH_PIN)'; mode='$(TORCH_INDEX)'; \
if [ -z "$$pin" ]; then echo "setup: requirements.txt pins no torch==<version>" >&2; exit 2; fi; \
have=$$($(PY) -c 'from importlib.metadata import version; print(version("torch"))' 2>/dev/null || true); \
if [ "$$mode" = auto ]; then \
  if [ "$${have%%+*}" = "$$pin" ]; then echo "setup: torch $$have is installed, the pinned version: kept (TORCH_INDEX=cpu|pypi|<index URL> replaces it)"; exit 0; fi; \
  if [ "$$(uname -s)" != Linux ]; then mode=pypi; why="PyPI's torch for $$(uname -s) has no CUDA libraries"; \
  elif nvidia-smi -L >/dev/null 2>&1; then mode=pypi; why="nvidia-smi -L found an NVIDIA GPU"; \
  else mode=cpu; why="no NVIDIA GPU here (nvidia-smi -L failed)"; fi; \
else why="TORCH_INDEX=$$mode"; fi; \
case "$$mode" in pypi) url=; tag=;; cpu) url='$(TORCH_CPU_INDEX)'; tag=cpu;; *) url=$$mode; tag=$${mode%/}; tag=$${tag##*/};; esac; \
if [ -n "$$have" ] && [ "$$have" = "$$pin$${tag:++$$tag}" ]; then echo "setup: torch $$have is installed, the build asked for: kept"; exit 0; fi; \
force=; if [ -n "$$have" ]; then force=--force-reinstall; fi; \
if [ -n "$$url" ]; then \
  echo "setup: torch==$$pin, the $${tag} build from $$url: $$why"; \
  if $(PY) -m pip install --no-deps $$force "torch==$$pin" --index-url "$$url"; then \
    now=$$($(PY) -c 'from importlib.metadata import version; print(version("torch"))'); \
    if [ "$$now" != "$$pin+$$tag" ]; then echo "setup: note: pip installed torch $$now, not $$pin+$$tag (a wheel found through pip's own configuration won)"; fi; exit 0; fi; \
  if [ '$(TORCH_INDEX)' != auto ]; then echo "setup: could not install torch==$$pin from $$url (TORCH_INDEX=$(TORCH_INDEX)): check the URL and the network, or use TORCH_INDEX=pypi" >&2; exit 1; fi; \
  echo "setup: $$url could not be reached or has no torch==$$pin for this Python; falling back to PyPI's default build (on Linux the CUDA one, several GB)"; \
else echo "setup: torch==$$pin, PyPI's default build: $$why"; fi; \
$(PY) -m pip install $$force "torch==$$pin"
endef

# ---- data: the cohort (the synthetic one is generated), validation, cache, folds -------------
ifeq ($(BUILTIN_COHORT),1)
$(DATA)/dataset.json: | $(STAMP)
	$(PY) -m sscild.cli phantom $(DATA) --profile $(PROFILE)
else
$(DATA)/dataset.json:
	@echo "DATA=$(DATA) is not a cohort folder: $(DATA)/dataset.json is missing." >&2
	@echo "A cohort folder holds dataset.json, imagesTr/, labelsTr/ and clinical.csv (README: 'Your own cohort')." >&2
	@exit 2
endif

# Each step runs once, here, and the Data chapter only reads what it wrote: validation
# (validation.json; a failed validation stops make), the run context, the cache with its table
# (cases.csv) and the folds (splits.json). Pretraining on the unlabelled scans needs only the
# validation, so it runs beside the cache and the Data chapter, before the first fold.
VALIDATION := $(RES)/validation.json
PREPARED   := $(RES)/cases.csv
PRETRAINED := $(RES)/pretrained/.made

data: $(NB)/01_data.ipynb

$(VALIDATION): $(DATA)/dataset.json $(LIBDEPS_stage_prepare) | $(STAMP)
	$(PY) -m sscild.cli validate $(abspath $(DATA)) --exclude-bad --brief --record $@ $(if $(filter 1 yes true,$(ALLOW_CLINICAL_GAPS)),--allow-clinical-gaps)
	@SSCILD_DATA_ROOT=$(abspath $(DATA_ROOT)) PYTHONPATH=lib $(PYTHON) -m sscild.context write --profile "$(PROFILE)" --data "$(DATA)" \
	  --results "$(RESULTS)" --jobs "$(FOLD_JOBS)" --threads "$(THREADS)"

$(PREPARED): $(VALIDATION) $(LIBDEPS_stage_prepare)
	$(PY) -m sscild.cli prepare $(abspath $(DATA)) --profile $(PROFILE) --quiet

$(PRETRAINED): $(VALIDATION) $(LIBDEPS_stage_pretrain)
	$(PY) -m sscild.cli pretrain $(abspath $(DATA)) --profile $(PROFILE)
	@mkdir -p $(@D) && touch $@

$(NB)/01_data.ipynb: notebooks/01_data.py $(PREPARED) $(LIBDEPS_01_data)
	$(CHAPTER_RUN) --step data $< $@

# ---- training: one target per fold, so `make -j4 train` trains four folds at once ----------
train: $(TRAIN_NBS)

fold-%: $(RES)/fold_%/training.ipynb ;

ifeq ($(LAUNCHER),slurm)
# one Slurm job array, one task per fold; each task runs this Makefile's local fold target
include mk/slurm.mk
else ifeq ($(LAUNCHER),local)
$(RES)/fold_%/training.ipynb: notebooks/train_fold.py $(PREPARED) $(LIBDEPS_train_fold) | $(STAMP) $(PRETRAINED)
	SSCILD_THREADS=$(FOLD_THREADS) $(RUN) --step train_fold_$* -p fold $* $< $@
else
$(error LAUNCHER=$(LAUNCHER) is not known: use LAUNCHER=local (default) or LAUNCHER=slurm)
endif

# the recorded measurements (benchmarks/) that chapters show: a changed record re-runs the chapters that read records
RECORDS := $(wildcard benchmarks/*.json benchmarks/*.csv)

$(NB)/02_training.ipynb: notebooks/02_training.py $(FOLD_NBS) $(LIBDEPS_02_training) $(RECORDS)
	$(CHAPTER_RUN) --step training_chapter $< $@

# ---- evaluation, clinical correlation, front matter, provenance ------------------------------
evaluate: $(NB)/03_segmentation.ipynb

$(NB)/03_segmentation.ipynb: notebooks/03_segmentation.py $(FOLD_NBS) $(LIBDEPS_03_segmentation) $(RECORDS)
	$(CHAPTER_RUN) --step evaluate $< $@

correlate: $(NB)/04_clinical.ipynb

$(NB)/04_clinical.ipynb: notebooks/04_clinical.py $(NB)/03_segmentation.ipynb $(LIBDEPS_04_clinical)
	$(CHAPTER_RUN) --step correlate $< $@

$(NB)/00_abstract.ipynb: notebooks/00_abstract.py $(NB)/03_segmentation.ipynb $(NB)/04_clinical.ipynb $(LIBDEPS_00_abstract)
	$(CHAPTER_RUN) --step abstract $< $@

# appendix: the trained models on real CT without labels (lung field vs the classical lung mask);
# REAL_CT names a folder of chest CT volumes (default: ../shared/data/real-ct when it exists)
REAL_CT ?= $(wildcard ../shared/data/real-ct)
$(NB)/A2_real_ct.ipynb: notebooks/A2_real_ct.py $(FOLD_NBS) $(LIBDEPS_A2_real_ct) $(RECORDS)
	$(CHAPTER_RUN) --step real_ct $< $@ $(if $(REAL_CT),-p real_ct_dir $(abspath $(REAL_CT)))

$(NB)/05_reproducibility.ipynb: notebooks/05_reproducibility.py $(filter-out $(NB)/05_reproducibility.ipynb,$(CHAPTER_NBS)) $(LIBDEPS_05_reproducibility) $(RECORDS)
	$(CHAPTER_RUN) --step reproducibility $< $@

# ---- appendix: external check on real CT (`make external`; not part of `make all`) ------------
-include mk/external.mk
# The book shows the appendix as last executed: its stamp (written by `make external`) is what the book
# depends on, so building the book never re-runs the appendix (hours on a CPU, other parameters). If
# the appendix's sources changed since it ran, the book is rebuilt and says so on that page.
EXT_DONE  := $(wildcard $(EXT_NB))
EXT_STALE := $(if $(EXT_DONE),$(shell for f in notebooks/A1_external.py $(EXT_LIB); do [ $$f -nt $(EXT_NB) ] && echo $$f; done))

# ---- the book: executed notebooks + hand-written pages -> static HTML (no network) -----------
# The marker records which run the book shows, so switching PROFILE or DATA rebuilds it.
BOOK_MARK := $(BOOK_OUT)/.run-source
$(shell mkdir -p $(BOOK_OUT); [ "$$(cat $(BOOK_MARK) 2>/dev/null)" = "$(abspath $(RES))" ] || echo "$(abspath $(RES))" > $(BOOK_MARK))

book: $(BOOK_HTML)

$(BOOK_HTML): $(CHAPTER_NBS) $(BOOK_SRC) $(BOOK_MARK) $(wildcard $(EXT_STAMP)) $(EXT_STALE) | $(STAMP)
	$(PY) -m sscild.book.build --src book --out $(BOOK_OUT) --notebooks $(NB) $(if $(EXT_DONE),--external $(EXT_NB)) \
	  $(if $(strip $(EXT_STALE)),--external-stale "$(strip $(EXT_STALE))")
	@touch $@  # an incremental Sphinx build leaves index.html (a redirect) as it was
	@echo "book: $(abspath $@)"

# ---- publishing the book, interactive editing (make publish, make lab) ----------------------
-include mk/publish.mk

# ---- tests ----------------------------------------------------------------------------------
test: $(STAMP)
	$(PY) -m pytest -q -rs

test-fast: $(STAMP)
	$(PY) -m pytest -q -rs -m "not slow"

# ---- clean: generated outputs only; never the cohort folders under data/ ------------------------
clean:
	rm -rf $(RESULTS) build .make figures/*/ $(BOOK_OUT)/_build $(BOOK_OUT)/chapters $(BOOK_MARK)
