# The two set-up commands of the README:
#   make demo   set up, then plan -> run -> report the embedded CPU demo
#   make test   set up, then run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all,dev]'
	touch $@

demo: setup
	CLIPA_BIN=$(abspath $(VENV))/bin bash scripts/demo.sh

# pytest's exit 5 (no test collected) is an error here, said in words (make turns every non-zero
# exit into its own exit 2).
test: setup
	HF_HUB_OFFLINE=1 $(PY) -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests" >&2; fi; exit $$rc

bench: setup
	$(PY) -m benchmarks.run_all

clean:
	rm -rf $(VENV) runs
