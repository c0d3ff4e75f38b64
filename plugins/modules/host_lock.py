#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: host_lock
short_description: Take or release the per-host lock that keeps two runs from writing at once
version_added: 0.2.0
description:
  - With O(state=present), takes the lock, a directory created with one atomic C(mkdir) (mode
    0700, its parent created when missing) holding an C(owner) file with O(owner), written to a
    temporary file and renamed so that it appears whole.
  - A lock whose C(owner) file already is O(owner) is held by this run; taking it again is a
    no-op.
  - A lock another run holds is tried again every O(delay) seconds for up to O(timeout) seconds;
    then the module fails naming the lock, its owner and its age, and how to remove a lock whose
    run died.
  - A lock older than O(stale_after) seconds (the age of its directory) is taken as left over by
    a run that died. It is moved aside (of two runs breaking it, one wins), checked to be the
    stale lock (else it is put back, as a third run took it meanwhile), removed, and described in
    RV(broken).
  - With O(state=absent), removes the lock only when its C(owner) file is exactly O(owner); a
    lock of another run is left alone.
  - Neither counts as a change, as the lock is not part of the host's converged state and a
    converged re-run must show C(changed=0).
  - While it waits, its action plugin shows on the controller, every few seconds, who holds the
    lock and how long this run has waited (the module writes O(progress_file), which the
    controller reads while the module runs).
    A lock taken at the first try runs the module once, as a plain task.
  - The role C(gpufleet.inference.host_lock) builds O(owner) and calls this module.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  path:
    description: The lock directory, an absolute path other than C(/), without a trailing C(/).
    type: path
    default: /run/gpufleet/lock
  owner:
    description:
      - One line that names this run, written to the lock's C(owner) file and compared with it.
        The role writes JSON (controller, C(ansible-playbook) pid, play, start time).
    type: str
    required: true
  state:
    description: V(present) takes the lock, V(absent) releases it if O(owner) holds it.
    type: str
    choices: [present, absent]
    default: present
  timeout:
    description: Seconds to wait for a lock another run holds (V(0) tries once).
    type: int
    default: 600
  delay:
    description: Seconds between two tries (more than 0).
    type: int
    default: 2
  stale_after:
    description: Seconds after which a lock is taken as left over by a run that died, and broken.
    type: int
    default: 3600
  progress_file:
    description:
      - A file on the host to which the module appends one JSON line (C(item), C(text),
        C(final)) when the lock's owner changes and at most every 2 seconds while it waits,
        and one when it takes the lock after a wait. For internal use - the action plugin
        sets it; set it only when running the module without the action.
    type: path
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details:
      - A check run takes no lock and writes nothing, not even the lock's parent directory; it
        returns RV(acquired=false) and RV(check_mode=true).
  diff_mode:
    support: none
  idempotent:
    support: full
notes:
  - The lock's parent directory must be writable by the remote user (C(become) for C(/run)).
"""

EXAMPLES = r"""
- name: Take the host lock, waiting up to 10 minutes for another run
  gpufleet.inference.host_lock:
    owner: '{"controller": "ops1", "pid": 4524, "play": "Apply", "started": "2026-11-22T14:20:03Z"}'
    timeout: 600
  register: lock

- name: Release it
  gpufleet.inference.host_lock:
    owner: '{"controller": "ops1", "pid": 4524, "play": "Apply", "started": "2026-11-22T14:20:03Z"}'
    state: absent
"""

RETURN = r"""
acquired:
  description:
    - Whether this run holds the lock now; V(false) with O(state=absent) and in check mode.
  returned: always
  type: bool
broken:
  description: The stale lock broken on the way, with its age and owner, or V(null).
  returned: always
  type: str
  sample: 'a stale lock (3725 s old), owner: {"controller": "ops1", "pid": 4524, ...}'
released:
  description: Whether O(state=absent) removed the lock.
  returned: always
  type: bool
check_mode:
  description: V(true) when the run was a check run, which takes no lock.
  returned: in check mode
  type: bool
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _lock, _waiting


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/run/gpufleet/lock"),
            owner=dict(type="str", required=True),
            state=dict(type="str", choices=["present", "absent"], default="present"),
            timeout=dict(type="int", default=600),
            delay=dict(type="int", default=2),
            stale_after=dict(type="int", default=3600),
            progress_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    out = dict(changed=False, acquired=False, broken=None, released=False)
    try:
        _lock.check_settings(p["path"], p["timeout"], p["delay"], p["stale_after"])
        _lock.check_owner(p["owner"])
    except ValueError as exc:
        module.fail_json(msg="host_lock: %s" % exc, **out)
    if module.check_mode:
        module.exit_json(check_mode=True, msg="check mode: a check run takes no lock and releases "
                         "none; nothing was written under %s" % p["path"], **out)
    fs = _lock.LocalFs()
    if p["state"] == "absent":
        result = _lock.release(fs, p["path"], p["owner"])
        out["released"] = result["released"]
        if result["failed"]:
            module.fail_json(msg=result["msg"], **out)
        module.exit_json(msg=result["msg"], **out)
    wait = _waiting.LockWait(fs, p["path"], p["timeout"],
                             _waiting.ProgressFile(p["progress_file"], time.monotonic),
                             time.monotonic, time.sleep)
    result = _lock.acquire(fs, p["path"], p["owner"], time.time, wait.sleep,
                           timeout_s=p["timeout"], delay_s=p["delay"],
                           stale_after_s=p["stale_after"])
    if result["acquired"]:
        wait.taken()
    out.update(acquired=result["acquired"], broken=result["broken"])
    if not result["acquired"]:
        module.fail_json(msg=result["reason"], **out)
    module.exit_json(msg="%s %s" % ("this run already holds the lock" if result["held_by_this_run"]
                                    else "took the lock", p["path"]), **out)


if __name__ == "__main__":
    main()
