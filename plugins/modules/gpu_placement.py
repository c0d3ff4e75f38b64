#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_placement
short_description: Decide which GPU (and host) each inference service runs on, with its VRAM budget
version_added: 0.1.0
description:
  - Places services (Ollama, vLLM, sidecars) on the GPUs of one host (O(gpus), the
    C(ansible_facts.gpus) of M(gpufleet.inference.gpu_facts) as is) or of many hosts (O(hosts)),
    by one of five strategies, and returns per service the GPU, the VRAM budget, the engine
    settings that hold the service to it and the C(CUDA_VISIBLE_DEVICES) value to use.
  - Pure computation; changes nothing anywhere. It usually runs on the controller
    (with C(delegate_to=localhost) or C(run_once)); the same function is the filter
    P(gpufleet.inference.gpu_placement#filter).
  - Warns but does not fail when a budget is above a GPU's capacity (the
    budget is cut to what the GPU has, and said so), when combined budgets are above a GPU,
    when an LLM lands on a GPU too small for it, when a pin names a GPU that does not exist
    (the service falls back to an available GPU; O(pin_not_found=fail) fails instead), when
    a compute capability is too low.
    Every warning is also in RV(issues) with a code.
  - The same input always gives the same output.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  gpus:
    description:
      - The GPUs of one host, in the shape of C(ansible_facts.gpus) from
        M(gpufleet.inference.gpu_facts). Each needs C(index) and C(memory_total_mib); C(uuid),
        C(vendor_index), C(memory_free_mib), C(processes), C(compute_capability),
        C(power_limit_w), C(healthy), C(errors), C(mig_mode) and C(mig_devices) are used when
        present.
      - GPUs with C(healthy=false) are never placed on and are named in a V(gpu_unhealthy)
        warning with their errors; only such a lost GPU may have a null C(index).
      - A null C(memory_total_mib) means the size is unknown, never assumed. That GPU takes the
        services pinned to it and those that fit nowhere else, with a V(memory_unknown) warning.
      - A GPU in MIG mode is placed on through its MIG devices (unique, non-null indexes).
      - Exactly one of O(gpus) and O(hosts).
    type: list
    elements: dict
  hosts:
    description:
      - Place across hosts instead. Each service then gets a host and a GPU.
      - Exactly one of O(gpus) and O(hosts).
    type: list
    elements: dict
    suboptions:
      name:
        description: The host's name (the inventory hostname, usually).
        type: str
        required: true
      gpus:
        description: That host's C(ansible_facts.gpus).
        type: list
        elements: dict
        default: []
      labels:
        description: Labels a service's O(services[].node_selector) must match.
        type: dict
        default: {}
      dedicated:
        description:
          - Engines, roles or service names this host is reserved for (for example a host
            that runs only vLLM). Other services never go there; the named ones prefer it.
        type: list
        elements: str
        default: []
  services:
    description: The services to place.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: Unique name of the service.
        type: str
        required: true
      vram_mib:
        description:
          - VRAM the service needs, in MiB. Without it the need is estimated from
            O(services[].model).
        type: int
      model:
        description:
          - Model to estimate the need from, by name or alias in the catalog (see O(catalog)),
            else from a parameter count in its name (V(mistral:7b)).
        type: str
      engine:
        description:
          - V(vllm) gets C(gpu_memory_utilization) in RV(assignments[].engine_settings), V(ollama)
            gets C(OLLAMA_*) settings, V(other) gets C(VRAM_BUDGET_MIB) / C(VRAM_BUDGET_GB).
          - Defaults to V(other).
        type: str
        choices: [ollama, vllm, other]
      role:
        description:
          - What the service does, for example V(llm), V(vision), V(embedding). V(llm) matters
            to O(strategy=latency_optimized) and O(strategy=isolation_first).
          - Defaults to the catalog's role of the model, else V(llm) for Ollama and vLLM, else
            V(other).
        type: str
      latency_critical:
        description:
          - On the critical path; O(strategy=latency_optimized) puts it on the fastest GPU.
        type: bool
        default: false
      exclusive:
        description: Wants a GPU of its own.
        type: bool
        default: false
      gpu:
        description:
          - Manual pin, honoured by every strategy. A GPU index (V(1)), V(i:j) for MIG device
            j of GPU i, or a UUID (C(GPU-...) or C(MIG-...)). With O(hosts), an index needs
            O(services[].host).
          - With O(services[].gpus) N above 1, a list of N distinct whole GPUs (indexes or
            UUIDs, no MIG device) of one host, in the order the engine numbers them.
          - A pin to a GPU that does not exist or cannot take services falls back to the
            strategy's choice, with a warning.
        type: raw
      gpus:
        description:
          - How many GPUs the service spans, 1 to 64; above 1, vLLM tensor parallel
            (C(--tensor-parallel-size)). Whole GPUs of one host and one vendor, never MIG
            devices; services spanning GPUs are placed before the others.
          - O(services[].vram_mib) and O(services[].vram_budget_mib) are then per GPU, and so
            is the estimate from O(services[].model) (see the notes).
          - Among the sets of N GPUs the choice is, in order, the hard wishes (compute
            capability, exclusivity), room on every one of them, the fastest link between
            them (the slowest pair counts, from the C(topology) of
            M(gpufleet.inference.gpu_facts); unknown when not reported), then the strategy's
            own preference, then position.
          - Other engines than vLLM are given the N GPUs as visible devices, with a
            V(tensor_parallel_engine) warning (Ollama splits a model across them by itself).
          - When no host has N whole GPUs the service may use, it is not placed
            (V(tensor_parallel_short)).
        type: int
      min_compute_capability:
        description: Lowest CUDA compute capability the service runs on, like V(7.0).
        type: str
      vram_budget_mib:
        description: Budget override in MiB, used instead of the estimate from the catalog.
        type: int
      context_length:
        description: Context length for the KV cache estimate; also rendered as engine setting.
        type: int
      parallel:
        description: Parallel sequences for the KV cache estimate; also rendered as engine setting.
        type: int
      host:
        description: With O(hosts), the host the service must run on.
        type: str
      node_selector:
        description: With O(hosts), labels the host must have.
        type: dict
  strategy:
    description:
      - V(manual) honours pins only; unpinned services go to the GPU with the most free memory,
        with a warning.
      - V(vram_based) places the largest budgets first, each onto the GPU with the most free memory.
      - V(latency_optimized) puts latency-critical services and LLMs on the fastest GPU (compute
        capability, then memory, then power limit) and the others elsewhere first.
      - V(isolation_first) gives each LLM the largest GPU to itself; the others share the rest,
        overflowing it (with a warning) rather than joining an LLM, unless sharing an LLM's GPU
        lets every service fit (V(isolation_not_kept) warning).
      - V(balanced) evens out utilisation (budget / usable memory) across GPUs.
      - On small hosts (up to 12 services and 8 GPUs or MIG devices) V(manual), V(vram_based) and
        V(balanced) fall back to an exhaustive search, bounded, when their rule misses a fit that
        exists; the explanation says so. Not when a service spans GPUs (O(services[].gpus)),
        where the strategy's rule and best fit choose.
    type: str
    choices: [manual, vram_based, latency_optimized, isolation_first, balanced]
    default: vram_based
  headroom_mib:
    description:
      - MiB kept free on every GPU (CUDA contexts, fragmentation). The default turns a 4 GB GPU
        (an RTX A400, 4,094 MiB) into a 3.5 GB budget.
    type: int
    default: 512
  reserve_mib:
    description: Extra MiB kept free on some GPUs, keyed by GPU index (one host) or UUID.
    type: dict
    default: {}
  live_usage:
    description:
      - V(account) counts memory that processes we do not manage hold now against free space;
        V(ignore) plans on empty GPUs.
    type: str
    choices: [account, ignore]
    default: account
  managed_processes:
    description:
      - Process name patterns (shell style, matched on the name and its basename) of the
        services being placed, whose memory is not counted as used by others, for example
        V(ollama) or V(*vllm*).
    type: list
    elements: str
    default: []
  visible_devices_by:
    description:
      - V(uuid) gives C(CUDA_VISIBLE_DEVICES=GPU-...); V(index) gives the index with
        C(CUDA_DEVICE_ORDER=PCI_BUS_ID), since CUDA's default order differs from nvidia-smi's.
      - AMD and Intel GPUs given by index get their C(vendor_index) (the number
        C(ROCR_VISIBLE_DEVICES) and C(ZE_AFFINITY_MASK) mean) when the facts have one.
    type: str
    choices: [uuid, index]
    default: uuid
  pin_not_found:
    description:
      - What a pin (O(services[].gpu)) to a GPU that O(gpus) does not list does.
      - V(warn) places the service on an available GPU with a warning; V(fail) fails before
        placing anything, naming the service and the pin (a typo in inventory). A pin to a
        listed GPU that cannot take services (unhealthy) always falls back with a warning.
    type: str
    choices: [warn, fail]
    default: warn
  catalog:
    description:
      - Models to add to, or replace in, the built-in catalog. It holds C(llama3.2:3b),
        C(llama3.2:1b), C(qwen2.5:1.5b), C(qwen2.5:7b), C(gpt-oss:20b), C(qwen3-vl:32b),
        C(nemotron-3-nano:30b) (Q4_K_M, for Ollama) and its NVFP4 checkpoint for vLLM,
        C(moondream2), C(florence-2-large), C(clip-vit-large), C(yolo26) and C(model-zoo)
        (a 6.8 GB budget shared by nine vision models).
      - Give O(catalog[].vram_mib), or O(catalog[].weights_mib) or O(catalog[].params_b) with
        O(catalog[].quantization), plus O(catalog[].layers), O(catalog[].kv_heads) and
        O(catalog[].head_dim) for the KV cache.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Model name, as services write it.
        type: str
        required: true
      aliases:
        description: Other names of the model.
        type: list
        elements: str
      vram_mib:
        description: Stated total footprint in MiB, used as is.
        type: int
      weights_mib:
        description: Size of the weights in MiB.
        type: int
      params_b:
        description: Parameters, in billions.
        type: float
      quantization:
        description:
          - Weight format, for example V(q4_k_m), V(q8_0), V(bf16), V(fp8), V(awq),
            V(mxfp4).
        type: str
      bits_per_weight:
        description: Bits per weight, instead of O(catalog[].quantization).
        type: float
      layers:
        description: Transformer layers.
        type: int
      kv_heads:
        description: Key/value heads.
        type: int
      head_dim:
        description: Dimension of one head.
        type: int
      context_length:
        description: Default context length of the model.
        type: int
      role:
        description: Default role of services running the model.
        type: str
      source:
        description: Where the numbers come from.
        type: str
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details: Computes only; runs the same in check mode.
  diff_mode:
    support: none
  idempotent:
    support: full
notes:
  - The VRAM estimate is weights (parameters x bits per weight) + KV cache (2 x layers x
    KV heads x head dim x 2 bytes x context x parallel) + runtime overhead (512 MiB, 1024 MiB
    for vLLM, + 5 % of weights), unless the catalog states a total.
  - vLLM takes C(gpu_memory_utilization x total) whatever the model needs, so the
    utilisation is the budget over the GPU's total, rounded down to 2 decimals, and vLLM's
    start rule (free memory >= utilisation x total) is checked against the co-tenants started
    before it (C(start_order) in RV(gpus)).
  - A service spanning N GPUs (O(services[].gpus)) is estimated per GPU. Tensor parallel
    splits the weights and the KV cache across the N GPUs, and each one pays the runtime
    overhead, so per GPU it is weights / N + KV cache / N + the engine base + 5 % of
    weights / N. A stated catalog total keeps the engine base on each GPU and splits the
    rest. vLLM gets one C(gpu_memory_utilization) for all N, the per-GPU budget over the
    smallest total of the N, and its start rule is checked on each of them.
  - A set of GPUs whose slowest link is a host bridge, a NUMA link or the system
    interconnect is said (V(tensor_parallel_slow_link)), only when the topology is known.
seealso:
  - module: gpufleet.inference.gpu_facts
  - plugin: gpufleet.inference.gpu_placement
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Gather GPU facts
  gpufleet.inference.gpu_facts:

- name: Place five services (an LLM, detection, captioning, embeddings, a model zoo)
  gpufleet.inference.gpu_placement:
    gpus: "{{ ansible_facts.gpus }}"
    strategy: vram_based
    managed_processes: [ollama]
    services:
      - {name: ai-llm, model: nemotron-3-nano:30b, engine: ollama, latency_critical: true}
      - {name: ai-yolo26, model: yolo26, latency_critical: true}
      - {name: ai-florence, model: florence-2-large}
      - {name: ai-clip, model: clip-vit-large}
      - {name: ai-enrichment, model: model-zoo, gpu: "1"}
  register: placement

- name: Place a 70B model across two NVLinked GPUs (tensor parallel) beside a small one
  gpufleet.inference.gpu_placement:
    gpus: "{{ ansible_facts.gpus }}"
    services:
      - {name: chat, engine: vllm, model: Qwen/Qwen2.5-72B-Instruct-AWQ, gpus: 2}
      - {name: embed, engine: ollama, vram_mib: 1024}

- name: Place vLLM on the dedicated host of a fleet
  gpufleet.inference.gpu_placement:
    hosts:
      - {name: khelben, gpus: "{{ hostvars.khelben.ansible_facts.gpus }}", dedicated: [vllm]}
      - {name: elminster, gpus: "{{ hostvars.elminster.ansible_facts.gpus }}"}
    services:
      - {name: vllm, engine: vllm, vram_mib: 49152}
      - {name: whisper, vram_mib: 3072, min_compute_capability: "7.0"}
  run_once: true
  delegate_to: localhost
"""

RETURN = r"""
assignments:
  description: One entry per service, in input order.
  returned: always
  type: list
  elements: dict
  contains:
    service:
      description: The service's name.
      type: str
    host:
      description: The host (with O(hosts)), else V(null).
      type: str
    engine:
      description: The engine.
      type: str
    role:
      description: The role.
      type: str
    model:
      description: The model, if given.
      type: str
    gpu:
      description: The GPU (V(1)) or MIG device (V(0:2)); V(null) when not placed.
      type: str
    gpu_index:
      description: The GPU's index.
      type: int
    gpu_uuid:
      description: The GPU's (or MIG device's) UUID.
      type: str
    gpu_name:
      description: The GPU's name.
      type: str
    vram_need_mib:
      description: O(services[].vram_mib) or the estimate.
      type: int
    vram_requested_mib:
      description: The budget asked for (override, else the need).
      type: int
    vram_budget_mib:
      description: The budget given, after any adjustment; per GPU for a service spanning GPUs.
      type: int
    adjusted:
      description: Whether the budget was cut to fit the GPU.
      type: bool
    pinned:
      description: Whether the service's pin was honoured.
      type: bool
    fallback:
      description: Whether a pin could not be honoured and the strategy chose.
      type: bool
    device_id:
      description:
        - The value for C(device_ids) / C(--gpus device=); for a service spanning GPUs, those
          of its GPUs joined by commas.
      type: str
    gpu_count:
      description: How many GPUs the service spans (O(services[].gpus)).
      type: int
    gpus:
      description:
        - Each GPU of the service (one for most services; empty when not placed). C(gpu),
          C(gpu_index), C(gpu_uuid) and C(gpu_name) above are those of the first.
      type: list
      elements: dict
      contains:
        gpu:
          description: The GPU (V(1)) or MIG device (V(0:2)).
          type: str
        gpu_index:
          description: The GPU's index.
          type: int
        gpu_uuid:
          description: The GPU's (or MIG device's) UUID.
          type: str
        gpu_name:
          description: The GPU's name.
          type: str
        device_id:
          description: This GPU's value for C(device_ids).
          type: str
    environment:
      description:
        - C(CUDA_VISIBLE_DEVICES) (and C(CUDA_DEVICE_ORDER) with indexes), C(ROCR_VISIBLE_DEVICES)
          for AMD; the service's GPUs joined by commas.
      type: dict
    engine_settings:
      description:
        - vLLM C(gpu_memory_utilization) (and C(max_model_len), C(max_num_seqs),
          C(tensor_parallel_size) for a service spanning GPUs); Ollama
          C(OLLAMA_GPU_OVERHEAD) in bytes (its budget held when it shares the GPU),
          C(OLLAMA_MAX_LOADED_MODELS), C(OLLAMA_KEEP_ALIVE=-1) next to vLLM; others
          C(VRAM_BUDGET_MIB) and C(VRAM_BUDGET_GB).
      type: dict
  sample:
    - service: ai-enrichment
      host: null
      engine: other
      role: vision
      model: model-zoo
      gpu: "1"
      gpu_index: 1
      gpu_uuid: GPU-0c8e1f4d-2a7b-4e55-9d61-7f3b2a9c8e21
      gpu_name: NVIDIA RTX A400
      vram_need_mib: 6963
      vram_requested_mib: 6963
      vram_budget_mib: 3582
      adjusted: true
      pinned: false
      fallback: false
      device_id: GPU-0c8e1f4d-2a7b-4e55-9d61-7f3b2a9c8e21
      environment: {CUDA_VISIBLE_DEVICES: GPU-0c8e1f4d-2a7b-4e55-9d61-7f3b2a9c8e21}
      engine_settings: {VRAM_BUDGET_MIB: 3582, VRAM_BUDGET_GB: "3.5"}
      gpu_count: 1
      gpus:
        - gpu: "1"
          gpu_index: 1
          gpu_uuid: GPU-0c8e1f4d-2a7b-4e55-9d61-7f3b2a9c8e21
          gpu_name: NVIDIA RTX A400
          device_id: GPU-0c8e1f4d-2a7b-4e55-9d61-7f3b2a9c8e21
issues:
  description:
    - Every warning with a code (for example V(budget_exceeds_gpu), V(combined_exceeds_gpu),
      V(llm_on_small_gpu), V(pin_not_found), V(compute_capability_too_low),
      V(vllm_start_rule), V(gpu_unhealthy), V(memory_unknown), V(live_usage_unknown),
      V(tensor_parallel_short), V(tensor_parallel_slow_link), V(tensor_parallel_engine)), the
      service and the GPU. The messages are also the task's warnings.
  returned: always
  type: list
  elements: dict
explanations:
  description:
    - Per service name, why that GPU (rule, free memory before, notes, estimate) and the
      runners-up that lost, with why. A service spanning GPUs also has C(gpus) (their
      labels) and C(link) (the slowest link between them), and its C(gpu) names them all with
      that link (C(GPU 2, 3 (nvlink))); its estimate has C(per_gpu).
  returned: always
  type: dict
gpus:
  description:
    - Per GPU or MIG device, usable memory, the budgets placed, utilisation, services and the
      order to start them in.
  returned: always
  type: list
  elements: dict
summary:
  description:
    - Counts, unplaced and adjusted services, overcommitted GPUs, GPUs of unknown memory size
      that hold services (V(unknown_memory_gpus)), utilisation mean and spread,
      V(fits), V(repaired) (a second pass was kept) and V(exact_search) (true when the fit of
      the exhaustive search was used).
  returned: always
  type: dict
gpu_assignments:
  description:
    - The C(gpu-assignments.yml) document, C(strategy) and C(assignments) (C(gpu),
      a list of indexes for a service spanning GPUs, C(vram_budget) in GB when set or
      adjusted).
  returned: always
  type: dict
by_host:
  description: With O(hosts), assignments and GPUs per host.
  returned: when O(hosts) is given
  type: dict
strategy:
  description: The strategy used.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement


def main():
    module = AnsibleModule(
        argument_spec=_placement.ARGUMENT_SPEC,
        mutually_exclusive=_placement.MUTUALLY_EXCLUSIVE,
        required_one_of=_placement.REQUIRED_ONE_OF,
        supports_check_mode=True,
    )
    params = module.params
    options = {key: params[key] for key in _placement.OPTION_KEYS}
    try:
        if params["hosts"] is not None:
            result = _placement.place_fleet(params["hosts"], params["services"], **options)
        else:
            result = _placement.place(params["gpus"], params["services"], **options)
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    for warning in result.pop("warnings"):
        module.warn(warning)
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
