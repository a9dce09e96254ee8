# Included by the Makefile: putting the built book online (make publish) and editing a chapter
# interactively (make lab). Both only use what `make all` / `make setup` already made.

.PHONY: publish lab

# ---- make publish: the built book -> a gh-pages branch (GitHub Pages "deploy from a branch") ------
#   make publish                         commit $(BOOK_OUT)/_build/html onto the local gh-pages branch
#   make publish PUSH=1 [REMOTE=origin]  ... and push that branch to REMOTE
#   make publish PUBLISH_REPO=/path      ... in another git repository than this checkout
# ghp-import writes the whole site as one new commit whose tree is exactly the built html folder
# (plus .nojekyll, so GitHub serves the _static/ folders as they are): files removed from the book
# disappear from the branch. It never touches the working tree, index or current branch.
PUBLISH_REPO   ?= $(CURDIR)
PUBLISH_BRANCH ?= gh-pages
REMOTE         ?= origin
PUSH           ?= 0
GHP_IMPORT     ?= $(abspath $(VENV))/bin/ghp-import
PUBLISH_SITE   := $(abspath $(BOOK_OUT))/_build/html
PUBLISH_MSG     = Publish the book built from $(shell git -C "$(CURDIR)" rev-parse --short HEAD 2>/dev/null || echo "an uncommitted tree") ($(abspath $(RES)))
PUBLISH_PUSH   := $(filter 1 yes true,$(PUSH))

publish:
	@if [ ! -f "$(PUBLISH_SITE)/index.html" ]; then \
	  echo "make publish: the book is not built: $(PUBLISH_SITE)/index.html is missing; nothing was published." >&2; \
	  echo "  Build it first with 'make all' (with the same PROFILE, DATA and BOOK_OUT), then run 'make publish' again." >&2; \
	  exit 2; fi
	@if [ ! -x "$(GHP_IMPORT)" ]; then \
	  echo "make publish: ghp-import is not installed ($(GHP_IMPORT) is missing). Run 'make setup' first." >&2; exit 2; fi
	@if ! git -C "$(PUBLISH_REPO)" rev-parse --git-dir >/dev/null 2>&1; then \
	  echo "make publish: PUBLISH_REPO=$(PUBLISH_REPO) is not a git repository. Point PUBLISH_REPO at a clone." >&2; exit 2; fi
ifneq ($(PUBLISH_PUSH),)
	@if ! git -C "$(PUBLISH_REPO)" remote get-url "$(REMOTE)" >/dev/null 2>&1; then \
	  echo "make publish: the repository $(PUBLISH_REPO) has no remote named '$(REMOTE)'." >&2; \
	  echo "  Add it (git remote add $(REMOTE) URL) or name another one with REMOTE=..." >&2; exit 2; fi
	@# start from the remote's gh-pages, so the push is a fast-forward and keeps its history
	@rc=0; git -C "$(PUBLISH_REPO)" ls-remote --exit-code --heads "$(REMOTE)" "$(PUBLISH_BRANCH)" >/dev/null || rc=$$?; \
	if [ $$rc -eq 0 ]; then \
	  git -C "$(PUBLISH_REPO)" fetch --quiet "$(REMOTE)" "+refs/heads/$(PUBLISH_BRANCH):refs/remotes/$(REMOTE)/$(PUBLISH_BRANCH)"; \
	elif [ $$rc -ne 2 ]; then \
	  echo "make publish: cannot reach remote '$(REMOTE)' of $(PUBLISH_REPO) (git ls-remote exit $$rc); nothing was pushed." >&2; exit 2; fi
endif
	cd "$(PUBLISH_REPO)" && \
	  GIT_COMMITTER_NAME="$${GIT_COMMITTER_NAME:-$$(git config user.name || echo sscild)}" \
	  GIT_COMMITTER_EMAIL="$${GIT_COMMITTER_EMAIL:-$$(git config user.email || echo sscild@localhost)}" \
	  "$(GHP_IMPORT)" --no-jekyll --branch "$(PUBLISH_BRANCH)" --remote "$(REMOTE)" \
	    --message "$(PUBLISH_MSG)" $(if $(PUBLISH_PUSH),--push) "$(PUBLISH_SITE)"
	@echo "publish: $(PUBLISH_SITE) -> branch $(PUBLISH_BRANCH) of $(PUBLISH_REPO)$(if $(PUBLISH_PUSH), pushed to '$(REMOTE)', (not pushed: add PUSH=1))"

# ---- make lab: JupyterLab from .venv, chapters open as notebooks (jupytext, see jupytext.toml) ----
#   make lab [LAB_PORT=8888] [LAB_IP=0.0.0.0]
# Right-click notebooks/<chapter>.py > Open With > Jupytext Notebook. The kernel is the project's
# (.venv's python3); SSCILD_RESULTS and SSCILD_DATA_ROOT point at this checkout's RESULTS and
# DATA_ROOT, so a chapter run top to bottom reads the results of the last `make all`.
LAB_IP   ?= 127.0.0.1
LAB_PORT ?= 8888
LAB_ROOT_FLAG = $(if $(filter 0,$(shell id -u)),--allow-root)

lab: export SSCILD_DATA_ROOT := $(abspath $(DATA_ROOT))
lab: export JUPYTER_PREFER_ENV_PATH := 1
lab: export PATH := $(abspath $(VENV))/bin:$(PATH)
lab: | $(STAMP)
	@echo "JupyterLab from $(VENV); open a chapter with right-click on notebooks/<chapter>.py > Open With > Jupytext Notebook."
	@echo "Results: $(SSCILD_RESULTS)   cohorts: $(abspath $(DATA_ROOT))   stop with Ctrl-C. The URL with its token follows."
	$(abspath $(VENV))/bin/jupyter lab --no-browser --ServerApp.ip=$(LAB_IP) --ServerApp.port=$(LAB_PORT) \
	  --ServerApp.root_dir="$(CURDIR)" $(LAB_ROOT_FLAG)
