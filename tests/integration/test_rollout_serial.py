# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rollout playbooks refuse batches Ansible would take as "every host at once" (a serial of
0, or a percentage over 100) before any host is touched, naming the variable and the value.
The rule itself is _preflight.check_serial (unit/plugins/module_utils/test__preflight_inputs.py).
"""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import BIN, REPO, ansible_env

PLAYBOOKS = {
    "site": (REPO / "site.yml", "PLAY [Preflight, place"),
    "switch_mode": (REPO / "playbooks" / "switch_mode.yml", "PLAY [Preflight, place"),
}


@pytest.mark.parametrize("playbook", sorted(PLAYBOOKS))
@pytest.mark.parametrize("extra, shown", [
    ({"gpufleet_serial": 0}, "gpufleet_serial=0"),
    ({"gpufleet_serial": "150%"}, "gpufleet_serial=150%"),
    ({"gpufleet_serial": [1, "0%"]}, "gpufleet_serial=[1, '0%'] (item 1: '0%')"),
])
def test_rollout_refuses_batches_of_every_host_at_once(playbook, extra, shown):
    path, main_play = PLAYBOOKS[playbook]
    proc = subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventory" / "localhost.yml"),
         str(path), "-e", "inference_mode=chat", "-e", json.dumps(extra)],
        capture_output=True, text=True, check=False, cwd=str(REPO), timeout=120,
        env=ansible_env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2, out
    assert ("rollout_serial_check: gpufleet_serial must be a count, a percentage like '25%' or "
            "a list of them (a count at least 1, a percentage 1-100%); got: " + shown) in out, out
    assert main_play not in out, out
