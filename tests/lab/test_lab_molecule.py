# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A molecule scenario run as users run it, against the lab hosts, counted by pytest.

`molecule test --all` (make lab-molecule) runs every scenario, one per role and one of
site.yml; the suite runs one cheap role scenario for real (its time is tight, and the roles'
own lab tests converge them in depth), and tests/integration/test_molecule_layout.py checks
without a lab that every role has its scenario with converge, idempotence, check and verify.
Nothing is passed on the command line: molecule finds .config/molecule/config.yml by itself.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# host_lock: the real role on lab-ws, with no image, model or weights to fetch.
SCENARIOS = ["host_lock"]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_molecule_scenario(lab, scenario):
    bindir = os.path.dirname(sys.executable)
    env = dict(
        os.environ,
        PATH=bindir + os.pathsep + os.environ["PATH"],
        NO_COLOR="1",
        TERM="dumb",
        ANSIBLE_CONFIG=os.path.join(ROOT, "ansible.cfg"),
        PYTHONPATH=os.path.join(ROOT, ".build", "collections"),
    )
    try:
        proc = _molecule(bindir, scenario, env)
    finally:
        # Molecule's destroy removes the hosts it used; the session's other lab tests rely on
        # them, so bring back the ones the lab fixture started.
        restore = subprocess.run(
            [sys.executable, os.path.join(ROOT, "lab", "lab.py"), "up", "--hosts",
             ",".join(sorted(lab))],
            capture_output=True, text=True, check=False, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    for step in ("converge", "idempotence", "check", "verify"):
        assert re.search(r"%s \S+ %s: Executed: Successful" % (scenario, step), out), out[-3000:]
    assert restore.returncode == 0, restore.stdout + restore.stderr


def _molecule(bindir, scenario, env):
    return subprocess.run(
        [os.path.join(bindir, "molecule"), "test", "-s", scenario],
        cwd=ROOT,
        env=env,
        check=False,
        capture_output=True,
        text=True,
        timeout=900,
    )
