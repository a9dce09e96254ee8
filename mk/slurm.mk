# Folds on a Slurm cluster (`make train LAUNCHER=slurm`, `make all LAUNCHER=slurm`); included by the
# Makefile. All fold notebooks are one grouped target, so make submits ONE job array for every fold
# that is not done (task id = fold), waits for it, then goes on with evaluation. Each task runs this
# Makefile's local fold target (`make fold-K LAUNCHER=local ...`), so a fold trains the same way as
# without Slurm (the first task to start pretrains, on its node; the others wait for it and reuse it).
# Logic: lib/sscild/cluster/ (command line: slurm.py); logs, status files, jobs.json: $(RES)/slurm/.
#
#   SLURM_PARTITION  --partition            SLURM_GRES     --gres, e.g. gpu:1
#   SLURM_TIME       --time per fold task   SLURM_ACCOUNT  --account
#   SLURM_CPUS       --cpus-per-task (= training threads of the task)
#   SLURM_MEM        --mem per task, e.g. 16G
#   SLURM_EXTRA      more sbatch flags, e.g. "--qos=short --constraint=a100"
#   SLURM_POLL       seconds between queue polls (15)
#   SLURM_MAX_WAIT   give up (and cancel the array) after this long, seconds or D-HH:MM:SS (2-00:00:00)
# The submitting machine and the compute nodes must share the checkout, .venv, DATA and RESULTS.

SLURM_PARTITION ?=
SLURM_TIME      ?=
SLURM_CPUS      ?=
SLURM_MEM       ?=
SLURM_GRES      ?=
SLURM_ACCOUNT   ?=
SLURM_EXTRA     ?=
SLURM_POLL      ?= 15
SLURM_MAX_WAIT  ?= 2-00:00:00
SLURM_MAKE      := $(MAKE)

# The folds the array may run: with only `train` / `fold-K` goals, FOLDS and the named folds;
# otherwise (all, evaluate, ...) every fold, as a local run would need them.
_slurm_goals := $(or $(MAKECMDGOALS),all)
ifeq ($(filter-out train fold-%,$(_slurm_goals)),)
SLURM_FOLDS := $(sort $(if $(filter train,$(_slurm_goals)),$(FOLDS)) $(patsubst fold-%,%,$(filter fold-%,$(_slurm_goals))))
else
SLURM_FOLDS := $(ALL_FOLDS)
endif

# what each task's make gets (absolute paths: tasks run on other machines, from the checkout)
SLURM_MAKE_VARS := PROFILE=$(PROFILE) DATA=$(abspath $(DATA)) DATA_ROOT=$(abspath $(DATA_ROOT)) \
  RESULTS=$(abspath $(RESULTS)) BOOK_OUT=$(abspath $(BOOK_OUT)) VENV=$(abspath $(VENV)) \
  $(if $(THREADS),THREADS=$(THREADS)) $(if $(SSCILD_SEED),SEED=$(SSCILD_SEED)) $(if $(SSCILD_STEPS),STEPS=$(SSCILD_STEPS))

# a failed array must not delete the notebooks of the folds that did finish
.PRECIOUS: $(FOLD_NBS)

$(FOLD_NBS) &: notebooks/train_fold.py $(PREPARED) $(LIBDEPS_train_fold) | $(STAMP)
	$(PY) -m sscild.cluster.slurm train --repo $(CURDIR) --run-dir $(abspath $(RES)) --folds "$(SLURM_FOLDS)" \
	  --job-name sscild-$(COHORT)-$(PROFILE) --make "$(SLURM_MAKE)" $(foreach v,$(SLURM_MAKE_VARS),--make-var $(v)) \
	  --partition "$(SLURM_PARTITION)" --time "$(SLURM_TIME)" --cpus "$(SLURM_CPUS)" --mem "$(SLURM_MEM)" \
	  --gres "$(SLURM_GRES)" --account "$(SLURM_ACCOUNT)" --extra "$(SLURM_EXTRA)" \
	  --poll "$(SLURM_POLL)" --max-wait "$(SLURM_MAX_WAIT)"
