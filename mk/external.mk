# ---- appendix "External check on real CT" (COVID-SemiSeg), included by the Makefile ----------------
#   make external                                   cross-validation on the training part
#   make external EXTERNAL_TEST=/path/to/test       ... and train on all, score the test part
#   make external EXTERNAL_TRAIN=/path/to/train     another copy of the training part
#   make external EXTERNAL_UNLABELLED=/path/to/unl  unlabelled slices (images/ only), read when the profile self-trains;
#                                                   default ../shared/data/covid-semiseg/unlabelled when
#                                                   present; EXTERNAL_UNLABELLED= (empty) trains without
#   make external EXTERNAL_PROFILE=long             the longer CPU recipe (up to 90 min on 2 cores); its run goes to
#                                                   $(RESULTS)/external-long, beside the default's $(RESULTS)/external,
#                                                   and the appendix shows both when both ran
#   make external EXTERNAL_JOBS=1                   train the networks one after another (default: side by side,
#                                                   one thread each, on a CPU; one at a time on a GPU)
# Uses the Makefile's PY, STAMP, RESULTS and BOOK_HTML (a built book is rebuilt with the appendix). Runs on 2 CPU threads unless THREADS=N is given.

_ext_default_goal := $(.DEFAULT_GOAL)

EXTERNAL_TRAIN   ?= $(abspath ../shared/data/covid-semiseg/train)
EXTERNAL_TEST    ?=
EXTERNAL_UNLABELLED ?= $(if $(wildcard ../shared/data/covid-semiseg/unlabelled/images),$(abspath ../shared/data/covid-semiseg/unlabelled))
EXTERNAL_PROFILE ?= cpu
EXTERNAL_JOBS    ?=
EXT_RES  := $(RESULTS)/external
EXT_NB   := $(EXT_RES)/A1_external.ipynb
# each profile's run has its own folder (the default cpu's is the appendix's folder), so that running one
# never overwrites the other's models and scores
EXT_RUN  := $(EXT_RES)$(if $(filter-out cpu external-cpu,$(EXTERNAL_PROFILE)),-$(EXTERNAL_PROFILE:external-%=%))
EXT_SUMMARY := $(EXT_RUN)/summary.json
EXT_MARK := $(EXT_RES)/.params
# the run's own parameters, in its folder: switching profiles re-runs the page, not the other profile's run
EXT_RUN_MARK := $(EXT_RUN)/.run-params
EXT_STAMP := $(EXT_RES)/.executed
EXT_PARAMS := profile=$(EXTERNAL_PROFILE) train=$(abspath $(EXTERNAL_TRAIN)) test=$(if $(EXTERNAL_TEST),$(abspath $(EXTERNAL_TEST))) unlabelled=$(if $(EXTERNAL_UNLABELLED),$(abspath $(EXTERNAL_UNLABELLED)))
# what the appendix uses: every library file the check (LIBDEPS_stage_external) and its chapter
# (LIBDEPS_A1_external) import (the Makefile's .make/libdeps.mk) and the recorded screens and runs
# it shows (every benchmarks/external_* record: a new screen's record re-runs the page without a line here)
EXT_LIB  := $(sort $(LIBDEPS_stage_external) $(LIBDEPS_A1_external)) $(wildcard benchmarks/external_*.csv benchmarks/external_*.json)

.PHONY: external
# The book follows the run: once the appendix is executed, a book that is already built is rebuilt
# with it (its page would otherwise still say "Not run in this build").
external: $(EXT_NB)
	@[ -f $(EXT_STAMP) ] || touch -r $(EXT_NB) $(EXT_STAMP)
	@[ ! -f $(EXT_SUMMARY) ] || echo "external: profile $(EXTERNAL_PROFILE): $(abspath $(EXT_SUMMARY))"
	@if [ -f "$(BOOK_HTML)" ]; then $(MAKE) --no-print-directory book; \
	else echo "external: appendix executed ($(EXT_NB)); no book is built yet: 'make all' builds it with this appendix."; fi

# the parameter marks, each rewritten only when the parameters change: the page's (switching folders or
# profile re-runs the chapter) and the run's own, in its folder (switching profiles leaves the other
# profile's finished run alone)
$(EXT_MARK) $(EXT_RUN_MARK): _external_params
	@mkdir -p $(@D)
	@echo '$(EXT_PARAMS)' | cmp -s - $@ || echo '$(EXT_PARAMS)' > $@
_external_params: ;

# the check itself (training, prediction, scores -> summary.json) is a stage, as the study's folds
# are: the appendix's notebook only reads what it wrote, so editing the page never retrains
# (without the training folder there is nothing to run: the page then says how to get the data)
$(EXT_SUMMARY): $(LIBDEPS_stage_external) $(EXT_RUN_MARK) | $(STAMP)
	@if [ ! -d "$(abspath $(EXTERNAL_TRAIN))/images" ]; then \
	  echo "external: $(abspath $(EXTERNAL_TRAIN)) has no images/: the check is not run (the appendix says how to get the data)"; \
	else set -x; SSCILD_THREADS=$(or $(THREADS),2) $(PY) -m sscild.external run $(abspath $(EXTERNAL_TRAIN)) $(abspath $(EXT_RUN)) \
	  --profile $(EXTERNAL_PROFILE) $(if $(EXTERNAL_UNLABELLED),--unlabelled-dir $(abspath $(EXTERNAL_UNLABELLED))) \
	  $(if $(EXTERNAL_TEST),--test-dir $(abspath $(EXTERNAL_TEST))) $(if $(EXTERNAL_JOBS),--jobs $(EXTERNAL_JOBS)); fi

$(EXT_NB): notebooks/A1_external.py $(EXT_LIB) $(EXT_MARK) $(EXT_SUMMARY) | $(STAMP)
	SSCILD_THREADS=$(or $(THREADS),2) $(PY) -m sscild.book.runner --run-dir $(EXT_RES) --step external $< $@ \
	  -p profile $(EXTERNAL_PROFILE) -p train_dir $(abspath $(EXTERNAL_TRAIN)) -p out_dir $(abspath $(EXT_RUN)) \
	  -p unlabelled_dir $(if $(EXTERNAL_UNLABELLED),$(abspath $(EXTERNAL_UNLABELLED)),none) \
	  $(if $(EXTERNAL_TEST),-p test_dir $(abspath $(EXTERNAL_TEST)))
	@touch $(EXT_STAMP)

# including this file never changes the Makefile's default goal
.DEFAULT_GOAL := $(_ext_default_goal)
