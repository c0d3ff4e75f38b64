# gpufleet.inference: the two commands are `make run` and `make test` (README).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
BUILD := .build
# The collection seen through its namespace path (a link to this checkout).
COLL_ROOT := $(BUILD)/collections
COLL_LINK := $(COLL_ROOT)/ansible_collections/gpufleet/inference
INVENTORY ?= inventory/localhost.yml
export ANSIBLE_CONFIG := $(CURDIR)/ansible.cfg
export PYTHONPATH := $(CURDIR)/$(COLL_ROOT)
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: help setup system-deps venv link collections run test test-quick test-ee lint sanity sanity-deps unit \
	build clean

help:
	@echo "make run    gather GPU facts on the inventory (INVENTORY=$(INVENTORY)) and print a summary"
	@echo "make test   lint, ansible-test sanity, unit, integration and lab tests"
	@echo "make test-quick   lint, unit and integration tests: no sanity, no lab host"
	@echo "make test-ee   the execution environment built and run as AWX runs a job (CI runs it too)"

setup: venv link

# Debian packages the checks need beyond the base machine: ansible-test's shellcheck test,
# systemd-analyze for the rendered units, and chromium with its driver for the fleet report's
# browser test.
SYSTEM_PACKAGES := shellcheck systemd chromium chromium-driver
system-deps:
	@missing=""; for pkg in $(SYSTEM_PACKAGES); do dpkg -s $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

venv: $(VENV)/.installed

$(VENV)/.installed: requirements/test.txt requirements/render.txt requirements/router.txt \
                    requirements/report.txt requirements/constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/test.txt \
	  -r requirements/render.txt -r requirements/router.txt -r requirements/report.txt \
	  -c requirements/constraints.txt
	touch $@

link:
	mkdir -p $(dir $(COLL_LINK))
	ln -sfn $(CURDIR) $(COLL_LINK)

# community.docker and friends, from the pinned PyPI ansible wheel (Galaxy is unreachable).
collections: venv
	PYTHON=$(CURDIR)/$(BIN)/python lab/vendor-collections.sh

run: setup
	$(BIN)/ansible-playbook -i $(INVENTORY) playbooks/gpu_summary.yml

unit: setup
	$(BIN)/pytest tests/unit

clean:
	rm -rf $(BUILD) $(VENV)

# ---- lint, sanity, tests -------------------------------------------------------------
PIP_BOOTSTRAP := $(HOME)/.ansible/test/cache/get_pip_24_2.py

# Lint and sanity are tests of the suite (tests/static/): `make test` and `make test-quick` run
# them beside the other tests, these targets run them alone.
lint: setup collections
	$(BIN)/pytest -p no:cacheprovider tests/static/test_lint.py

# ansible-test's pip bootstrap comes from a host we cannot reach: see
# tests/sanity/get_pip_offline.py. tests/static/test_sanity.py runs ansible-test on a copy of
# the collection under ansible_collections/gpufleet/inference, outside any other git work tree.
sanity-deps: setup system-deps
	mkdir -p $(dir $(PIP_BOOTSTRAP))
	ls $(dir $(PIP_BOOTSTRAP))pip-24.2-*.whl >/dev/null 2>&1 || \
	  $(BIN)/pip download --quiet --disable-pip-version-check --no-deps -d $(dir $(PIP_BOOTSTRAP)) pip==24.2
	install -m 644 tests/sanity/get_pip_offline.py $(PIP_BOOTSTRAP)

sanity: sanity-deps
	$(BIN)/pytest -p no:cacheprovider tests/static/test_sanity.py

# On a host with an NVIDIA GPU only (CI has none, so `make test` does not run it): gpu_facts and
# gpu_drain_wait against the real driver (README, "Checked on a real GPU"). The Python must have
# ansible-core, nvidia-ml-py and PyTorch.
.PHONY: real-gpu-check
REAL_GPU_PYTHON ?= python3
REAL_GPU_OUT ?= real-gpu-out
real-gpu-check:
	$(REAL_GPU_PYTHON) tests/real_gpu/check.py $(REAL_GPU_OUT)

# Benchmarks (bench/README.md): results in bench/results/*.json, tables in bench/README.md.
.PHONY: bench
bench: setup lab-setup
	$(BIN)/python bench/run.py

# The last command of `make test` is pytest over every test layer (lint and sanity, unit,
# integration, lab): its summary line closes the run. Each group of lab hosts runs in one
# pytest-xdist worker, beside the other groups and the other tests (tests/conftest.py); the
# lab's engine is settled once, before the workers start. The execution environment's build and
# AWX-style run (about 5 minutes of two cores) is `make test-ee`: CI runs it before `make test`.
TEST_WORKERS ?= 4
EE_TESTS := tests/lab/test_lab_ee.py
test: setup collections sanity-deps lab-setup
	DOCKER_HOST=$$(lab/engine.sh ensure) $(BIN)/pytest -n $(TEST_WORKERS) --dist loadscope --durations=25 \
	  --ignore=$(EE_TESTS) tests

test-ee: setup lab-setup
	DOCKER_HOST=$$(lab/engine.sh ensure) $(BIN)/pytest $(EE_TESTS)

# The inner loop: lint, unit and integration tests (some use the lab's Docker engine, no host).
# Three workers on two cores: a playbook run waits on its module processes now and then.
test-quick: setup collections system-deps lab-setup
	DOCKER_HOST=$$(lab/engine.sh ensure) $(BIN)/pytest -n 3 --dist loadscope tests/static/test_lint.py \
	  tests/unit tests/integration

include lab/lab.mk
