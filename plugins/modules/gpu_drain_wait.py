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
    O(names) is listed, the freed memory is back (used memory at most O(target_used_mib) plus
    O(tolerance_mib)) when a target is given, and the reading has stayed within
    O(tolerance_mib) for O(stable) seconds since it got there.
  - Without O(target_used_mib) (or O(baseline_available_mib) on unified-memory GPUs) nothing
    proves the memory is back; stability alone then decides, and O(stable) must cover the
    gaps between the steps of the driver's teardown. Give a target where you can.
  - On unified-memory GPUs (GB10 / DGX Spark) NVML has no memory size and lists the memory of
    live processes only, so memory the driver still holds after a process exited does not
    show there. When a watched GPU is unified, the memory signal is MemAvailable of
    O(meminfo_path) instead (GPU and CPU share the memory); the wait ends when the processes
    are gone, MemAvailable is at least O(baseline_available_mib) minus O(tolerance_mib) when
    given, and MemAvailable has stayed within O(tolerance_mib) for O(stable) seconds.
    O(target_used_mib) is not used there.
  - Fails after O(timeout) seconds with the last reading. No fixed sleep, so a drain the driver
    finishes at once costs O(stable) seconds, and a slow one as long as it takes.
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
  stable:
    description:
      - Seconds the freed memory must stay back and steady (used memory, MemAvailable on
        unified-memory GPUs, within O(tolerance_mib)) before the wait ends.
      - The default, 1 second, is two readings past the first at the default O(interval).
        Drivers hand an exited process's memory back in one step (a real H200 freed 8.6 GiB
        between two readings 20 ms apart, 0.14 s after a kill), so with a target the memory
        being back is the proof, and the interval only rules out a reading caught while
        something else moved. Without a target, raise it to cover the driver's teardown.
      - Renamed from C(settle) (default 5) in this release.
    type: float
    default: 1.0
  meminfo_path:
    description:
      - The meminfo file whose MemAvailable is the memory signal on unified-memory GPUs, and
        whose MemTotal sizes them. Not read for the signal when every watched GPU is discrete.
    type: path
    default: /proc/meminfo
  baseline_available_mib:
    description:
      - On unified-memory GPUs, the MemAvailable (MiB) memory must climb back to, typically
        MemAvailable before the stop plus what the stopped processes held.
      - Ignored on discrete GPUs.
    type: int
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
- name: Wait until GPU 0 is back to 317 MiB used, Ollama gone, stable for 1 second
  gpufleet.inference.gpu_drain_wait:
    gpus: ["0"]
    names: [ollama]
    target_used_mib: 317
    stable: 1
    timeout: 120

- name: Without a target, stability alone decides; cover the driver's teardown
  gpufleet.inference.gpu_drain_wait:
    gpus: ["0"]
    names: [ollama]
    stable: 5

- name: On a GB10, wait until MemAvailable is back to 60000 MiB and stable (default 1 second)
  gpufleet.inference.gpu_drain_wait:
    names: [ollama]
    baseline_available_mib: 60000
"""

RETURN = r"""
waited_s:
  description: Seconds the wait took.
  returned: always
  type: float
  sample: 3.52
last:
  description:
    - The last reading (C(used_mib) per GPU index, C(total_used_mib), C(processes) still listed,
      and C(available_mib), MemAvailable, on unified-memory GPUs).
  returned: always
  type: dict
samples:
  description: The latest readings (at most 50), each with C(t) seconds since the start.
  returned: always
  type: list
  elements: dict
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _drain,
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
    module = AnsibleModule(argument_spec=dict(_drain.ARGUMENT_SPEC), supports_check_mode=True)
    if not HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=PYNVML_IMP_ERR)
    try:
        result = _drain.wait_with_nvml(pynvml, module.params, time.monotonic, time.sleep)
    except (ValueError, _nvml.NvmlUnavailable, _nvml.NvmlError) as exc:
        module.fail_json(msg="gpu_drain_wait: %s" % exc)
    out = dict(changed=False, waited_s=result["waited_s"], last=result["last"],
               samples=result["samples"])
    if not result["drained"]:
        module.fail_json(msg=result["reason"], **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
