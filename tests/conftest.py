# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""How `make test` spreads the tests over pytest-xdist workers.

Tests are sent to the workers by scope, and a scope runs in one worker, one test after the
other:
- the lab test modules that drive the same lab hosts form one scope (LAB_MODULE_GROUPS), so
  two workers never drive one host;
- any other module is a scope of its own, so its fixtures (some render or build a lot) are set
  up once, not once per worker.
The scopes run beside each other: lab tests mostly wait on containers, so they overlap on two
cores with the CPU-bound unit and integration tests.
"""

from __future__ import annotations

import os

import pytest
from xdist.scheduler import LoadScopeScheduling

LAB_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lab")
# The fixture that starts a group of lab hosts (tests/lab/conftest.py and the modules).
HOST_FIXTURES = {"lab": "lab-ws", "ws": "lab-ws", "cpu": "lab-ws", "dual_lab": "lab-dual",
                 "dual2_lab": "lab-dual2", "dual3_lab": "lab-dual3",
                 "spark": "lab-spark", "switch_vars": "lab-spark"}
# Lab modules by the group of hosts they drive; a lab module not listed has hosts of its own.
LAB_MODULE_GROUPS = {
    "test_lab_hosts.py": "lab-ws", "test_lab_placement.py": "lab-ws",
    "test_lab_molecule.py": "lab-ws", "test_lab_report.py": "lab-ws",
    "test_lab_ee.py": "lab-ws",
    "test_lab_apply.py": "lab-dual2", "test_lab_first_run.py": "lab-dual3",
    "test_lab_site.py": "lab-dual",
    "test_lab_installed.py": "lab-dual3",
    "test_lab_switch.py": "lab-spark",
}

# About how long each long scope runs in `make test` (seconds, its --durations on two cores):
# the order in which workers take them, the longest first, so that no long scope starts late
# and runs alone at the end while the other workers wait. A lab scope not listed counts
# LAB_SCOPE_DEFAULT_S; any other scope not listed comes after the listed ones.
LONG_SCOPE_SECONDS = {
    # lab host groups and lab modules with hosts of their own
    "lab-dual": 650, "lab-dual2": 850, "lab-dual3": 550, "lab-spark": 700,
    "tests/lab/test_lab_sleep.py": 700, "lab-ws": 250, "tests/lab/test_lab_fleet.py": 180,
    "tests/lab/test_lab_amd.py": 260, "tests/lab/test_lab_multi.py": 120,
    "tests/lab/test_lab_podman.py": 250,
    # linters and ansible-test sanity
    "tests/static/test_sanity.py": 280, "tests/static/test_lint.py": 90,
    # integration modules that run many playbooks
    "tests/integration/test_preflight.py": 190, "tests/integration/test_router.py": 120,
    "tests/integration/test_host_lock.py": 110, "tests/integration/test_k8s.py": 25,
    "tests/integration/test_render.py": 100, "tests/integration/test_gpu_facts_module.py": 80,
    "tests/integration/test_bad_input_playbooks.py": 70, "tests/integration/test_security.py": 50,
    "tests/integration/test_status_playbook.py": 45, "tests/integration/test_registry_login.py": 35,
    "tests/integration/test_fleet_outcome.py": 30, "tests/unit/test_lab_standins.py": 25,
    "tests/unit/test_lab_standins_sleep.py": 22,
}
LAB_SCOPE_DEFAULT_S = 60


def scope_of(nodeid):
    """The scope (one worker, in order) of a test: its lab host group, else its module."""
    path = nodeid.split("::", 1)[0]
    if path.startswith("tests/lab/"):
        return LAB_MODULE_GROUPS.get(os.path.basename(path), path)
    return path


def pytest_collection_modifyitems(config, items):
    """A lab test that starts hosts must sit in the scope of those hosts (the table above)."""
    for item in items:
        if not str(item.path).startswith(LAB_DIR + os.sep):
            continue
        groups = {HOST_FIXTURES[name] for name in getattr(item, "fixturenames", ())
                  if name in HOST_FIXTURES}
        module_group = LAB_MODULE_GROUPS.get(item.path.name)
        if groups and groups != {module_group}:
            raise pytest.UsageError(
                "%s drives the lab hosts of %s: list %s in LAB_MODULE_GROUPS of tests/conftest.py"
                " under that group (it says %s)"
                % (item.nodeid, ", ".join(sorted(groups)), item.path.name, module_group))


def scope_weight(scope, tests):
    """Which scope a free worker takes first: lab and other long scopes before the others, the
    longest first (LONG_SCOPE_SECONDS), then the others by their number of tests (xdist's own
    order): short scopes of many quick tests fill the end of the run."""
    if scope.startswith("tests/lab/") or scope in LONG_SCOPE_SECONDS:
        return (1, LONG_SCOPE_SECONDS.get(scope, LAB_SCOPE_DEFAULT_S))
    return (0, tests)


def pytest_xdist_make_scheduler(config, log):
    class HostGroupScheduling(LoadScopeScheduling):
        """xdist's scope scheduling, with two changes that shorten `make test`: the longest
        lab scopes start first (the run ends on short scopes, not on a lab scope that began
        late), and a worker takes its next scope only when it waits for one (xdist's own
        takes it two tests early: a lab worker would hold it for minutes, idle workers beside)."""

        def _split_scope(self, nodeid):
            return scope_of(nodeid)

        def _assign_work_unit(self, node):
            first = max(self.workqueue,
                        key=lambda scope: scope_weight(scope, len(self.workqueue[scope])))
            self.workqueue.move_to_end(first, last=False)
            super()._assign_work_unit(node)

        def _reschedule(self, node):
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            # One pending test is the one the worker holds back until it knows the next.
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    return HostGroupScheduling(config, log)
