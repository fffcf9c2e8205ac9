# Two commands do all set-up: `make demo` and `make test` (README).
# Both create .venv and install everything on first use; later runs skip straight to the work.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.structgen-installed
DEMO_CONFIG ?= configs/digits.yml
DEMO_ARGS   ?=
# pytest-xdist workers for `make test`: one per core of a 2-core machine like CI's (0: one process)
TEST_WORKERS ?= 2

.PHONY: setup demo test bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml .ci/system-deps.sh .ci/python-deps.sh
	bash .ci/system-deps.sh
	PYTHON=$(PYTHON) bash .ci/python-deps.sh $(VENV)
	$(PY) -c "import torch, torchvision, ray, ffcv, submitit, sklearn; print('[structgen] environment ready: torch', torch.__version__, 'ray', ray.__version__)"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/structgen train-tree --config $(DEMO_CONFIG) $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
