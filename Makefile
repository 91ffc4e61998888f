# Cascade developer tasks (GNU make).
#   make test [PYTEST_ARGS='-k foo tests/test_x.py']   venv + Redis check + pytest
#   make demo                                          end-to-end demo against the simulator
#   make venv | clean | distclean

PYTHON      ?= python3
VENV        ?= .venv
VPY         := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
PYTEST_ARGS ?=
PIP_QUIET   ?= -q --disable-pip-version-check

.DEFAULT_GOAL := test
.PHONY: venv test demo clean distclean

venv: $(STAMP)

$(VPY):
	@echo "==> creating $(VENV)"
	@$(PYTHON) -m venv $(VENV)

# Re-install whenever pyproject.toml is newer than the stamp. The interpreter is order-only:
# its mtime (a symlink to the system python) says nothing about the installed packages.
$(STAMP): pyproject.toml | $(VPY)
	@echo "==> installing cascade[dev] into $(VENV)"
	@$(VPY) -m pip install $(PIP_QUIET) --upgrade pip
	@$(VPY) -m pip install $(PIP_QUIET) -e '.[dev]'
	@touch $@

# Redis: CASCADE_TEST_REDIS_URL, else 127.0.0.1:6379 if it answers, else tests/conftest.py starts
# a private redis-server (installed here with apt-get if missing). See tests/redis_server.py.
# GNU make exits 2 on any failing recipe; pytest's own status is printed. Exit 5 (no tests
# collected) is a failure too.
test: $(STAMP)
	@$(VPY) -m tests.redis_server --ensure-binary
	@status=0; $(VENV)/bin/pytest -q -n 2 --dist loadfile $(PYTEST_ARGS) || status=$$?; \
	if [ $$status -eq 5 ]; then echo "make test: pytest collected no tests (exit 5): failure" >&2; \
	elif [ $$status -ne 0 ]; then echo "make test: pytest exited with status $$status" >&2; fi; \
	exit $$status

demo: $(STAMP)
	$(VENV)/bin/cascade sim exec --scenario examples/scenario.toml -- \
		$(VENV)/bin/cascade-submit examples/tickets.jsonl --pipeline ticket-triage --wait --out demo-results.jsonl

clean:
	rm -rf build dist .pytest_cache *.egg-info demo-results*.jsonl
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
