#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: apply_record
short_description: Record the outcome of an apply on the host
version_added: 0.2.0
description:
  - Writes C({result, runtime, services, mode, finished_at}) as JSON to O(path), the record the
    fleet report and the metrics read, only when the result, the runtime, the services or the
    mode differ from the record there (its C(finished_at) is not compared), so a converged re-run
    changes nothing. A record written before O(mode) existed is rewritten once when a mode is
    given.
  - Writes through a temporary file and an atomic rename; the directory is created when missing.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  path:
    description: The record file.
    type: path
    default: /etc/gpufleet/apply.json
  result:
    description: What became of the apply.
    type: str
    required: true
    choices: [ok, rolled_back, failed]
  runtime:
    description: What ran the services (for example V(compose) or V(systemd)).
    type: str
    required: true
  services:
    description: The active services of the plan.
    type: list
    elements: str
    default: []
  mode:
    description:
      - The mode the services ran in (the name of C(services_plan.mode)), for example V(chat),
        V(ingestion) or a dual-GPU mode V(ollama). The fleet report shows the host's mode from it.
      - Omitted, the record has no C(mode).
    type: str
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
  idempotent:
    support: full
seealso:
  - module: gpufleet.inference.project_files
"""

EXAMPLES = r"""
- name: Record the apply
  gpufleet.inference.apply_record:
    result: ok
    runtime: compose
    services: "{{ services_plan.active }}"
    mode: "{{ services_plan.mode.name }}"
"""

RETURN = r"""
record:
  description: The record as it is on the host now (or would be, in check mode).
  returned: always
  type: dict
  sample:
    result: ok
    runtime: compose
    services: [ollama, vision]
    mode: chat
    finished_at: "2026-12-06T05:00:00+00:00"
"""

import datetime
import json
import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _outcome


def _read(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def with_mode(record, changed, previous, mode):
    """The record of ``_outcome.record`` with ``mode`` added (none: no key), and whether it
    differs from ``previous`` (whose ``mode`` was left out of the comparison that made
    ``changed``)."""
    if mode:
        record["mode"] = mode
    return record, changed or (previous or {}).get("mode") != (mode or None)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            path=dict(type="path", default="/etc/gpufleet/apply.json"),
            result=dict(type="str", required=True, choices=list(_outcome.OUTCOMES)),
            runtime=dict(type="str", required=True),
            services=dict(type="list", elements="str", default=[]),
            mode=dict(type="str"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        before = _read(p["path"])
        try:
            previous = json.loads(before) if before else None
        except ValueError:
            previous = None
        if not isinstance(previous, dict):
            previous = None
        record, changed = _outcome.record(
            p["result"], p["runtime"], p["services"],
            None if previous is None else {k: v for k, v in previous.items() if k != "mode"})
        record, changed = with_mode(record, changed, previous, p["mode"])
    except (OSError, ValueError) as exc:
        module.fail_json(msg="apply_record: %s: %s" % (p["path"], exc))
    if not changed:
        module.exit_json(changed=False, record=previous)
    record["finished_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat()
    after = json.dumps(record, indent=4) + "\n"
    diff = dict(before=before or "", after=after, before_header=p["path"], after_header=p["path"])
    if not module.check_mode:
        directory = os.path.dirname(p["path"]) or "."
        try:
            os.makedirs(directory, mode=0o755, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".apply.", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(after)
            os.chmod(tmp, 0o644)
            module.atomic_move(tmp, p["path"])
        except OSError as exc:
            module.fail_json(msg="apply_record: cannot write %s: %s" % (p["path"], exc))
    module.exit_json(changed=True, record=record, diff=diff)


if __name__ == "__main__":
    main()
