#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_drain_wait
short_description: Wait until the GPU memory that stopped services held has really drained
version_added: 0.1.0
description:
  - Polls the GPUs through NVML (the reader of M(gpufleet.inference.gpu_facts)) every
    O(interval) seconds and returns as soon as, on the watched GPUs, no process of O(pids) or
    O(names) is listed, used memory is at most O(target_used_mib) (plus O(tolerance_mib)) when
    given, and used memory has not moved by more than O(tolerance_mib) for O(settle) seconds.
  - Fails after O(timeout) seconds with the last reading. No fixed sleep.
  - The wait a mode switch needs before it starts vLLM, whose start-up memory profiling fails
    when a co-tenant frees memory meanwhile (vllm#56830).
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  gpus:
    description: GPUs to watch, by index or UUID. Empty watches every GPU.
    type: list
    elements: str
    default: []
  pids:
    description: Host PIDs of the stopped services' processes; they must leave the GPUs.
    type: list
    elements: int
    default: []
  names:
    description: Substrings of process names that must leave the GPUs (for example V(ollama)).
    type: list
    elements: str
    default: []
  target_used_mib:
    description:
      - Used MiB (summed over the watched GPUs) the memory must fall to, typically the used
        memory before the stop minus what the stopped processes held.
    type: int
  settle:
    description:
      - Seconds used memory must stay within O(tolerance_mib). On unified-memory GPUs (GB10),
        NVML has no memory size and used memory is the sum of the listed processes, so the
        driver's teardown after a process has gone is not visible; O(settle) must cover it.
    type: float
    default: 5.0
  tolerance_mib:
    description: MiB of movement still counted as stable.
    type: int
    default: 64
  timeout:
    description: Seconds to wait at most.
    type: float
    default: 120.0
  interval:
    description: Seconds between two readings.
    type: float
    default: 0.5
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details: Waiting changes nothing; in check mode the module waits as well.
  diff_mode:
    support: none
  idempotent:
    support: full
requirements:
  - nvidia-ml-py on the host.
seealso:
  - module: gpufleet.inference.gpu_facts
"""

EXAMPLES = r"""
- name: Wait until what Ollama held on GPU 0 is free and stable for 5 seconds
  gpufleet.inference.gpu_drain_wait:
    gpus: ["0"]
    names: [ollama]
    settle: 5
    timeout: 120
"""

RETURN = r"""
waited_s:
  description: Seconds the wait took.
  returned: always
  type: float
  sample: 3.52
last:
  description:
    - The last reading (C(used_mib) per GPU index, C(total_used_mib), C(processes) still listed).
  returned: always
  type: dict
samples:
  description: The latest readings (at most 50), each with C(t) seconds since the start.
  returned: always
  type: list
  elements: dict
"""

import os
import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _drain,
    _gpu_facts,
    _nvml,
)

try:
    import pynvml
except ImportError:
    HAS_PYNVML = False
    PYNVML_IMP_ERR = traceback.format_exc()
else:
    HAS_PYNVML = True
    PYNVML_IMP_ERR = None


def main():
    module = AnsibleModule(
        argument_spec=dict(
            gpus=dict(type="list", elements="str", default=[]),
            pids=dict(type="list", elements="int", default=[]),
            names=dict(type="list", elements="str", default=[]),
            target_used_mib=dict(type="int"),
            settle=dict(type="float", default=5.0),
            tolerance_mib=dict(type="int", default=64),
            timeout=dict(type="float", default=120.0),
            interval=dict(type="float", default=0.5),
        ),
        supports_check_mode=True,
    )
    if not HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=PYNVML_IMP_ERR)
    p = module.params
    memory = _gpu_facts.read_meminfo_mib(os.path.join("/", "proc", "meminfo"))

    def read():
        return _nvml.read_gpus(pynvml, system_memory_mib=memory)["gpus"]

    try:
        result = _drain.wait_drained(
            read, time.monotonic, time.sleep, gpus=p["gpus"], pids=p["pids"], names=p["names"],
            target_used_mib=p["target_used_mib"], settle_s=p["settle"],
            tolerance_mib=p["tolerance_mib"], timeout_s=p["timeout"], interval_s=p["interval"])
    except (ValueError, _nvml.NvmlUnavailable, _nvml.NvmlError) as exc:
        module.fail_json(msg="gpu_drain_wait: %s" % exc)
    out = dict(changed=False, waited_s=result["waited_s"], last=result["last"],
               samples=result["samples"])
    if not result["drained"]:
        module.fail_json(msg=result["reason"], **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
