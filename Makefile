# The two set-up commands of the README:
#   make demo   set up, then pilots -> calibrate -> predict -> run -> report the embedded CPU demo
#   make test   set up, then run the test suite
# Set-up installs the exact versions in requirements-lock.txt (the ones the suite last passed with), so
# a new release of a dependency cannot change what a fresh clone gets. `make lock` refreshes that file.
VENV ?= .venv
PY := $(VENV)/bin/python
LOCK := requirements-lock.txt
PYTEST_ARGS ?=

.PHONY: setup demo test bench lock clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade 'pip>=24'
	$(PY) -m pip install -q -e '.[all,dev]' -c $(LOCK)
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

# Resolve the newest releases pyproject.toml allows in a scratch venv and write them to the lock file.
# Then run `make clean test` and commit the lock only if the suite passes.
lock:
	rm -rf .lock-venv && python3 -m venv .lock-venv
	.lock-venv/bin/python -m pip install -q --upgrade 'pip>=24'
	.lock-venv/bin/python -m pip install -q -e '.[all,dev]'
	{ echo "# Exact versions the test suite passed with; used as pip constraints by 'make setup'."; \
	  echo "# Refresh: make lock && make clean test (commit only if the suite passes)."; \
	  .lock-venv/bin/python -m pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .lock-venv

clean:
	rm -rf $(VENV) runs .lock-venv
