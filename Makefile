# The two commands of the README. Each installs what it needs (into .venv) on first use.
VENV ?= .venv
ROUNDS ?= 3

.PHONY: demo test install

$(VENV)/.installed: pyproject.toml constraints.txt scripts/install.sh
	scripts/install.sh $(VENV) dev
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/speechalign demo --workdir speechalign-demo --rounds $(ROUNDS)

test: $(VENV)/.installed
	$(VENV)/bin/python -m pytest
