#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: engine_sleep
short_description: Put a vLLM server to sleep or unload Ollama's models, and wake them again
version_added: 0.1.0
description:
  - Frees an inference engine's GPU memory without stopping its server, and takes it back,
    so that a mode switch takes seconds instead of a cold start.
  - B(vLLM.) O(state=asleep) sends C(POST /sleep?level=<level>) and waits until
    C(GET /is_sleeping) reports true. Level 1 copies the weights to host
    memory and drops the KV cache; level 2 drops both. On a unified-memory GPU (GB10 / DGX
    Spark) host memory is the GPU's memory, so level 1 frees only the KV cache there; use
    level 2 to free the weights too.
  - O(state=awake) sends C(POST /wake_up) (with O(level=2) the weights are read again from
    disk, C(POST /wake_up?tags=weights), C(POST /collective_rpc) with method
    C(reload_weights), C(POST /wake_up?tags=kv_cache)), then waits until C(/is_sleeping) is
    false and C(/health) answers 200. Give O(level=2) when the server was put to sleep at level
    2; woken without the reload it answers garbage.
  - These endpoints exist only when the vLLM server runs with the environment variable
    C(VLLM_SERVER_DEV_MODE=1); they free memory only when it was started with
    C(--enable-sleep-mode). Without dev mode they answer 404 and the module fails saying so.
    Without the flag vLLM 0.10 still answers 200 and reports it is sleeping, but frees nothing;
    follow a sleep with M(gpufleet.inference.gpu_drain_wait), which sees that.
  - A request sent to a sleeping vLLM kills its engine (vllm#15483); route no traffic to it
    while it sleeps.
  - B(Ollama.) O(state=asleep) unloads each of O(models) (every loaded model when empty) with
    C(POST /api/generate) and C(keep_alive) 0, then waits until C(GET /api/ps) lists none of
    them (Ollama answers before its runner has stopped). O(state=awake) loads each of
    O(models) not loaded yet with C(keep_alive) -1 (kept loaded) and waits until C(/api/ps)
    lists them; without O(models) it does nothing.
  - Idempotent, by reading C(/is_sleeping) or C(/api/ps) first. A vLLM server already asleep
    is left as it is, whatever its level.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  engine:
    description: The engine serving at O(url).
    type: str
    choices: [vllm, ollama]
    required: true
  url:
    description: The server's base URL, C(http://) or C(https://), without a path.
    type: str
    required: true
  state:
    description:
      - V(asleep) frees the memory (vLLM sleeps, Ollama's models are unloaded); V(awake) takes
        it back.
    type: str
    choices: [asleep, awake]
    required: true
  level:
    description:
      - vLLM's sleep level. With O(state=asleep) the level to sleep at (V(2) on unified-memory
        GPUs, to free the weights). With O(state=awake) the level it slept at; V(2) reloads the
        weights from disk.
      - Not used for Ollama.
    type: int
    choices: [1, 2]
    default: 1
  models:
    description:
      - Ollama only. The models to unload (O(state=asleep); empty means every loaded model,
        read from C(/api/ps)) or to load again (O(state=awake)). V(llama3.2) is
        V(llama3.2:latest).
    type: list
    elements: str
    default: []
  timeout:
    description:
      - Seconds the whole change may take (requests and waits) before the module fails with
        what it saw last. A level 2 wake reads the weights from disk, which for a large model
        takes minutes.
    type: float
    default: 120
  interval:
    description: Seconds between two readings of C(/is_sleeping), C(/health) or C(/api/ps).
    type: float
    default: 0.25
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details: In check mode the state is read and nothing is sent that changes it.
  diff_mode:
    support: none
  idempotent:
    support: full
seealso:
  - module: gpufleet.inference.gpu_drain_wait
  - name: vLLM sleep mode
    description: Levels, tags and the development endpoints.
    link: https://docs.vllm.ai/en/latest/features/sleep_mode/
  - name: Ollama API
    description: keep_alive, /api/generate and /api/ps.
    link: https://github.com/ollama/ollama/blob/main/docs/api.md
"""

EXAMPLES = r"""
- name: Put vLLM to sleep, freeing its weights too (unified memory)
  gpufleet.inference.engine_sleep:
    engine: vllm
    url: http://127.0.0.1:8000
    state: asleep
    level: 2

- name: Wake vLLM after a level 2 sleep (reloads the weights)
  gpufleet.inference.engine_sleep:
    engine: vllm
    url: http://127.0.0.1:8000
    state: awake
    level: 2

- name: Unload every model of an Ollama server
  gpufleet.inference.engine_sleep:
    engine: ollama
    url: http://127.0.0.1:11434
    state: asleep

- name: Load the chat model again and keep it loaded
  gpufleet.inference.engine_sleep:
    engine: ollama
    url: http://127.0.0.1:11434
    state: awake
    models: [qwen2.5:7b]
"""

RETURN = r"""
was_sleeping:
  description:
    - Whether it was asleep before. vLLM, what C(/is_sleeping) said; Ollama, with
      O(state=asleep) none of the models to unload was loaded, with O(state=awake) none of
      O(models) was loaded (without O(models), no model was loaded).
  returned: always
  type: bool
  sample: false
waited_s:
  description: Seconds the requests and the wait took.
  returned: always
  type: float
  sample: 0.42
requests:
  description: The requests sent that change the state, in order (none in check mode).
  returned: always
  type: list
  elements: str
  sample: ["POST /sleep?level=1"]
models:
  description: Ollama, the models unloaded or loaded (or that would be in check mode).
  returned: always
  type: list
  elements: str
  sample: ["qwen2.5:7b"]
"""

import time

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _http, _sleep


def main():
    module = AnsibleModule(
        argument_spec=dict(
            engine=dict(type="str", required=True, choices=list(_sleep.ENGINES)),
            url=dict(type="str", required=True),
            state=dict(type="str", required=True, choices=list(_sleep.STATES)),
            level=dict(type="int", default=1, choices=list(_sleep.LEVELS)),
            models=dict(type="list", elements="str", default=[]),
            timeout=dict(type="float", default=120.0),
            interval=dict(type="float", default=0.25),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = _sleep.ensure(
            p["engine"], p["url"], p["state"], _http.request, time.monotonic, time.sleep,
            level=p["level"], models=p["models"], timeout_s=p["timeout"],
            interval_s=p["interval"], check_mode=module.check_mode)
    except ValueError as exc:
        module.fail_json(msg="engine_sleep: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
