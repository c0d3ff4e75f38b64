# The simulated GPU lab (lab/README.md). Included from the main Makefile, which defines
# VENV, BIN, PYTHON, and exports ANSIBLE_CONFIG and PYTHONPATH.
LAB_HOSTS ?=
LAB_INVENTORY ?= inventory/lab
LAB_ARGS := --inventory $(LAB_INVENTORY) $(if $(LAB_HOSTS),--hosts $(LAB_HOSTS))

.PHONY: lab-setup lab-image lab-up lab-down lab-down-all lab-status lab-test lab-molecule \
	lab-engine-stop

$(VENV)/.lab-installed: requirements/lab.txt requirements/ee.txt requirements/test.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements/test.txt -r requirements/lab.txt \
	  -r requirements/ee.txt -c requirements/constraints.txt
	touch $@

# Engine, mmdebstrap, Compose plugin, vendored collections, images: what a fresh machine needs.
lab-setup: $(VENV)/.lab-installed link
	PYTHON=$(CURDIR)/$(BIN)/python lab/ci-setup.sh

lab-image: lab-setup
	$(BIN)/python lab/lab.py image

lab-up: lab-setup
	$(BIN)/python lab/lab.py up $(LAB_ARGS)

lab-status:
	$(BIN)/python lab/lab.py status $(LAB_ARGS)

lab-down:
	$(BIN)/python lab/lab.py down $(if $(LAB_HOSTS),--hosts $(LAB_HOSTS))

# Every host, and the lab registry (with its volume), hub and networks.
lab-down-all:
	$(BIN)/python lab/lab.py down --all

# Only the engine that lab/engine.sh started itself, by its recorded PID.
lab-engine-stop:
	lab/engine.sh stop

lab-test: lab-setup
	$(BIN)/pytest -p no:cacheprovider tests/lab

# Molecule's scenarios, one per role and one of site.yml, on the lab's hosts; molecule finds the
# shared base config (.config/molecule/config.yml) by itself.
lab-molecule: lab-setup
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/molecule test --all

# The execution environment built for real and run as AWX runs a job (lab/ee.py, lab/README.md
# "Execution environment"): its base image, ansible-builder build, then ansible-runner runs
# site.yml in it twice on lab-edge (the second run must change nothing).
.PHONY: lab-ee
lab-ee: lab-setup
	$(BIN)/python lab/ee.py all --host lab-edge
