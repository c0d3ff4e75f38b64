#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: engine_handover
short_description: Put engines to sleep, wait for the GPU memory they free, wake others
version_added: 0.1.0
description:
  - The fast path of a mode switch, in one module run so that nothing stands between the
    steps - puts each engine of O(park) to sleep (vLLM) or unloads its models (Ollama), as
    M(gpufleet.inference.engine_sleep) with O(gpufleet.inference.engine_sleep#module:state=asleep)
    does; then, when one of them changed, waits until the GPU memory they freed is back and
    steady, as M(gpufleet.inference.gpu_drain_wait) does with the options of O(drain); then
    wakes each engine of O(wake).
  - A wake only follows a finished drain - a vLLM woken while the other engine's memory is
    still held allocates its weights and KV cache at once and would not find the memory. When
    a step fails the module stops there and fails, naming the step; the engines already
    parked stay parked.
  - Each engine is idempotent - one already asleep is not put to sleep again (and nothing
    drains), one already awake is not woken.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  park:
    description:
      - Engines to put to sleep, in this order. Each is a dict with C(name) (for messages),
        C(engine) (V(vllm) or V(ollama)), C(url) (the base URL, for example
        V(http://127.0.0.1:8000)), C(level) (vLLM's sleep level, 1 or 2, default 1) and
        C(models) (Ollama, the models to unload; empty unloads every loaded one).
    type: list
    elements: dict
    default: []
  wake:
    description:
      - Engines to wake, in this order, after the drain; the same keys as O(park). Give a
        vLLM the C(level) it was put to sleep at (level 2 reloads the weights), and an Ollama
        the C(models) to load again (loaded with keep_alive -1).
    type: list
    elements: dict
    default: []
  drain:
    description:
      - The drain wait between the parks and the wakes, with the options of
        M(gpufleet.inference.gpu_drain_wait) (C(gpus), C(pids), C(names), C(target_used_mib),
        C(baseline_available_mib), C(meminfo_path), C(tolerance_mib), C(stable), C(timeout),
        C(interval)). Left out, nothing is waited for.
    type: dict
    suboptions:
      gpus:
        description: GPUs to watch, by index or UUID. Empty watches every GPU.
        type: list
        elements: str
        default: []
      pids:
        description: Host PIDs that must leave the GPUs (Ollama's runners; a sleeping vLLM stays).
        type: list
        elements: int
        default: []
      names:
        description: Substrings of process names that must leave the GPUs.
        type: list
        elements: str
        default: []
      target_used_mib:
        description: Used MiB, summed over the watched GPUs, the memory must fall to.
        type: int
      baseline_available_mib:
        description: On unified-memory GPUs, the MemAvailable MiB the host must get back to.
        type: int
      meminfo_path:
        description: Where MemAvailable is read (unified-memory GPUs).
        type: path
        default: /proc/meminfo
      tolerance_mib:
        description: MiB the memory may differ from its target, and move while it is steady.
        type: int
        default: 64
      stable:
        description: Seconds the freed memory must stay back and steady.
        type: float
        default: 1.0
      timeout:
        description: Seconds the drain may take; the module fails after them and wakes nothing.
        type: float
        default: 120
      interval:
        description: Seconds between two readings.
        type: float
        default: 0.5
  timeout:
    description: Seconds each engine may take to get to sleep or wake.
    type: float
    default: 120
  interval:
    description: Seconds between two reads of an engine's state.
    type: float
    default: 0.25
requirements:
  - nvidia-ml-py (for O(drain))
notes:
  - Check mode reports what would be parked and woken; it waits for nothing.
seealso:
  - module: gpufleet.inference.engine_sleep
  - module: gpufleet.inference.gpu_drain_wait
"""

EXAMPLES = r"""
- name: Chat to ingestion - unload Ollama's model, wait for its memory, wake vLLM
  gpufleet.inference.engine_handover:
    park:
      - {name: ollama, engine: ollama, url: "http://127.0.0.1:11434"}
    wake:
      - {name: vllm, engine: vllm, url: "http://127.0.0.1:8000", level: 2}
    drain:
      gpus: ["0"]
      pids: [41230]
      target_used_mib: 1200
"""

RETURN = r"""
steps:
  description:
    - What was done to each engine, in order - C(name), C(engine), C(state) (asleep or
      awake), C(changed), C(was_sleeping), C(waited_s), C(requests) (the POSTs made),
      C(models) (Ollama).
  returned: always
  type: list
  elements: dict
drain:
  description:
    - The drain wait's outcome (C(drained), C(waited_s), C(reason), C(last), C(samples)), as
      M(gpufleet.inference.gpu_drain_wait) returns them; null when no wait ran.
  returned: always
  type: dict
"""

import time
import traceback

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _drain,
    _http,
    _nvml,
    _sleep,
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
            park=dict(type="list", elements="dict", default=[]),
            wake=dict(type="list", elements="dict", default=[]),
            drain=dict(type="dict", options=dict(_drain.ARGUMENT_SPEC)),
            timeout=dict(type="float", default=120.0),
            interval=dict(type="float", default=0.25),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["drain"] is not None and not HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"), exception=PYNVML_IMP_ERR)

    def drain():
        return _drain.wait_with_nvml(pynvml, p["drain"], time.monotonic, time.sleep)

    try:
        result = _sleep.handover(
            p["park"], p["wake"], _http.request, time.monotonic, time.sleep,
            drain=drain if p["drain"] is not None else None, timeout_s=p["timeout"],
            interval_s=p["interval"], check_mode=module.check_mode)
    except (ValueError, _nvml.NvmlUnavailable, _nvml.NvmlError) as exc:
        module.fail_json(msg="engine_handover: %s" % exc)
    out = dict(changed=result["changed"], steps=result["steps"], drain=result["drain"])
    if result["error"]:
        module.fail_json(msg="engine_handover: %s" % result["error"], **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
