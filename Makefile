# The two commands of the README (and a fast test tier). Each installs what it needs into .venv on first use:
# the demo the runtime set only, the tests that set plus pytest, ruff and Debian's chromium for the browser test.
VENV ?= .venv
ROUNDS ?= 3
WORKERS ?= auto

.PHONY: demo test test-fast lint install vllm-env

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV)
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed
	scripts/install.sh $(VENV) dev
	touch $@

install: $(VENV)/.installed

# the vLLM generation backend's own environment (generate.backend = "vllm", `speechalign vllm-serve`); the test
# that serves a model with it runs when it is there (CI makes it), and is skipped when not
vllm-env: .venv-vllm/.installed

.venv-vllm/.installed: scripts/install.sh
	scripts/install.sh .venv-vllm vllm
	touch $@

demo: $(VENV)/.installed
	$(VENV)/bin/speechalign demo --workdir speechalign-demo --rounds $(ROUNDS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .

test: lint
	$(VENV)/bin/python -m pytest -n $(WORKERS) --dist worksteal

# the pure tests (criteria, guard, config, store, report): seconds, for the development loop
test-fast: lint
	$(VENV)/bin/python -m pytest -m pure -n 0 -p no:cacheprovider
