#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: services_plan
short_description: Plan a host's inference services on the controller (catalog, profile, mode, GPUs)
version_added: 0.1.0
description:
  - Checks the service catalog, settles the profile and the dual-GPU mode, places the services
    that use a GPU on the host's GPUs and returns the plan as the fact C(services_plan), which the
    compose, systemd_units, k8s_manifests, preflight, health, router and report roles read. The
    services role is one call of this action.
  - Runs on the controller. From the host it reads only what the host alone can tell, each at
    most once, its GPUs through M(gpufleet.inference.gpu_facts) when O(gpus) is not given, and
    C(DUAL_GPU_MODE) in O(env_file) through M(ansible.builtin.slurp) when O(dual_gpu_mode) is
    empty. The placement runs in process, with the engine and the argument checks of
    M(gpufleet.inference.gpu_placement); its warnings are the task's warnings.
  - O(profile=auto) is V(cpu), V(single-gpu), V(dual-gpu) or V(multi-gpu) for 0, 1, 2, 3 or
    more healthy GPUs. V(multi-gpu) runs the services that list it (the default catalog's dual-GPU
    stack on GPUs 0 and 1, and an Ollama replica on every other healthy GPU).
  - A catalog entry with C(per_spare_gpu=true) is a template - pass 1 places every other active
    service, pass 2 keeps them where pass 1 put them and pins one replica C(<entry>_gpu<index>)
    to each healthy whole GPU pass 1 left free (host ports + 0, 1, ...).
    RV(ansible_facts.services_plan.summary) names any healthy GPU still idle, and why.
  - Bad input fails naming the field and the value, in the words of the services role's
    variables, for example C(services_catalog.vllm.ports[0] must be 1-65535; got 70000).
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  catalog:
    description:
      - Every service, by name (C(services_catalog); its keys are in the services role's README).
    type: dict
    required: true
  profile:
    description:
      - The user-facing profile. V(auto) follows the number of healthy GPUs. V(remote) runs no
        local inference.
    type: str
    choices: [auto, remote, cpu, single-gpu, dual-gpu, multi-gpu]
    default: auto
  mode:
    description:
      - The mode that runs, a name of O(modes) (C(inference_mode)). It wins over
        O(dual_gpu_mode).
      - Empty (and O(dual_gpu_mode) empty) reads the host's recorded mode, C(INFERENCE_MODE) and
        then C(DUAL_GPU_MODE) of O(env_file); V(ollama) when neither is there.
        RV(ansible_facts.services_plan.dual_gpu_mode_source) says which.
    type: str
    default: ''
  modes:
    description:
      - The modes (C(services_modes)), name to C(description), C(exclusive) and C(services).
      - The dual-GPU modes V(ollama), V(vllm) and V(mixed) are always there. They share the
        GPUs and run the catalog entries whose C(modes) name them.
      - Any other mode lists its C(services) and runs exactly those, on any GPU profile, placed
        by the strategy (GPU number pins are the dual-GPU layout's; UUID and MIG pins hold).
        C(exclusive=true) says its engines must not share GPU memory with another mode's.
      - Omitted, the dual-GPU modes only.
    type: dict
  dual_gpu_mode:
    description:
      - Which stack occupies GPU 1 under V(dual-gpu) and V(multi-gpu), V(ollama), V(vllm) or
        V(mixed) (the C(DUAL_GPU_MODE) of the project's C(.env)), when O(mode) is empty.
      - Beside a mode that lists its services, the dual-GPU mode recorded in C(DUAL_GPU_MODE)
        (kept from O(env_file) when empty).
    type: str
    default: ''
  env_file:
    description:
      - The host's compose project C(.env), read for C(DUAL_GPU_MODE) when O(dual_gpu_mode) is
        empty. A missing file is fine; one that cannot be read fails the task.
    type: str
    default: /opt/gpufleet/.env
  extra_profiles:
    description: Opt-in profiles, name to enabled (C(services_extra_profiles)).
    type: dict
    default: {}
  gpu_facts_options:
    description:
      - Options of the M(gpufleet.inference.gpu_facts) run when O(gpus) is not given, for
        example C(meminfo_path) or C(backend).
    type: dict
    default: {}
  gpus:
    description:
      - The host's GPUs in the shape of C(ansible_facts.gpus).
      - When not given, M(gpufleet.inference.gpu_facts) runs on the host once and its facts are
        returned too.
    type: list
    elements: dict
  strategy:
    description:
      - The placement strategy of M(gpufleet.inference.gpu_placement); pins are honoured by all.
    type: str
    choices: [manual, vram_based, latency_optimized, isolation_first, balanced]
    default: vram_based
  visible_devices_by:
    description:
      - V(uuid) selects GPUs by UUID, V(index) by index with C(CUDA_DEVICE_ORDER=PCI_BUS_ID).
    type: str
    choices: [uuid, index]
    default: uuid
  placement_options:
    description:
      - More options of M(gpufleet.inference.gpu_placement), checked and converted as that module
        does; only C(headroom_mib), C(reserve_mib), C(live_usage), C(managed_processes),
        C(catalog) and C(pin_not_found). Another key fails naming it.
    type: dict
    default: {}
  sources:
    description:
      - Where images, Ollama models and Hugging Face weights come from. Keys (each optional)
        C(image_mirrors) (registry to mirror, for example V(docker.io) to
        V(mirror.lan:5000) and V(quay.io) to V(mirror.lan:5000/quay.io); an image is then
        pulled as C(mirror.lan:5000/ollama/ollama:latest)), C(insecure_registries) (registry hosts
        reached over plain HTTP), C(ollama_registry) (default C(registry.ollama.ai)),
        C(ollama_source_dir) (an offline directory in Ollama's layout), C(hf_home) (the
        host's Hugging Face cache, default C(/srv/gpufleet/models/huggingface)),
        C(hf_endpoint) (a Hugging Face mirror) and C(hf_token_file) (the 0600 env file
        holding C(HF_TOKEN), when a token is set). Another key fails naming it.
      - The plan's C(downloads) lists what the active services need, for
        M(gpufleet.inference.downloads).
    type: dict
    default: {}
  secret_environment:
    description:
      - Per-service environment that must not land in a world-readable file (tokens, keys),
        service name to C(NAME) to value (C(services_secret_environment)).
      - Only the names enter the plan, as each service's C(secret_environment); the values are
        never returned. M(gpufleet.inference.project_files) writes them, from its own
        O(gpufleet.inference.project_files#module:secret_env), into a mode 0600 file.
      - A service not in O(catalog), a bad variable name, or a name the service's catalog
        C(environment) (or the placement) sets too fails naming it.
    type: dict
    default: {}
extends_documentation_fragment:
  - gpufleet.inference.attributes
  - gpufleet.inference.attributes.facts
attributes:
  action:
    description: An action plugin does the work on the controller; this file is its documentation.
    support: full
  check_mode:
    support: full
    details: It only reads; it runs the same in check mode.
  diff_mode:
    support: none
  facts:
    support: full
  idempotent:
    support: full
notes:
  - The module_defaults of M(gpufleet.inference.gpu_facts) do not reach the run this action
    makes; give O(gpus) from your own M(gpufleet.inference.gpu_facts) task to read the GPUs
    another way.
seealso:
  - module: gpufleet.inference.gpu_facts
  - module: gpufleet.inference.gpu_placement
  - plugin: gpufleet.inference.services_plan
    plugin_type: filter
"""

EXAMPLES = r"""
- name: Plan the services of this host (reads its GPUs and its .env)
  gpufleet.inference.services_plan:
    catalog: "{{ services_catalog }}"
    dual_gpu_mode: "{{ dual_gpu_mode | default('') }}"

- name: Plan on GPU facts already gathered, in mixed mode, with 1 GiB headroom
  gpufleet.inference.services_plan:
    catalog: "{{ services_catalog }}"
    profile: dual-gpu
    dual_gpu_mode: mixed
    gpus: "{{ ansible_facts.gpus }}"
    placement_options:
      headroom_mib: 1024
      managed_processes: ["*ollama*", "*vllm*"]

- name: Show what runs where
  ansible.builtin.debug:
    msg: "{{ services_plan.summary }}"
"""

RETURN = r"""
ansible_facts:
  description: The plan, and the GPU facts when the action read them.
  returned: always
  type: dict
  contains:
    services_plan:
      description: What runs on the host, and where.
      returned: always
      type: dict
      contains:
        profile:
          description: The resolved profile (never V(auto)).
          type: str
          sample: multi-gpu
        dual_gpu_mode:
          description: The settled dual-GPU mode.
          type: str
          sample: vllm
        dual_gpu_mode_source:
          description: Where the mode came from, V(given), V(env) (O(env_file)) or V(default).
          type: str
          sample: env
        env_file:
          description: O(env_file).
          type: str
        compose_profiles:
          description: The compose profiles to pass, the sub-profile C(<profile>-<mode>) included.
          type: list
          elements: str
          sample: [multi-gpu, multi-gpu-vllm]
        gpu_overlay:
          description: Whether the profile places services on GPUs.
          type: bool
        active:
          description: The names of the services that run.
          type: list
          elements: str
        services:
          description:
            - Every enabled service with its checked keys, C(compose_profiles), C(active) and
              C(placement) (GPU index, UUID, C(device_id), vendor, budget, C(environment),
              C(budget_env), C(engine_args)), or V(null) when not on a GPU.
            - C(image) is the reference the host pulls (through O(sources)'s mirror),
              C(image_source) the catalog's; C(models) the models an Ollama server needs.
              A vLLM service reads the host's Hugging Face cache offline and never gets the
              token.
            - C(secret_environment) lists the names (never the values) of the service's
              O(secret_environment).
            - A service spanning N GPUs (C(gpus)) has C(gpu_count), C(gpu_indexes),
              C(gpu_uuids) and C(device_ids) in its C(placement); C(device_id) joins them.
            - C(replica_of) names the C(per_spare_gpu) entry a replica comes from (V(null)
              otherwise); the entry itself is not listed.
          type: list
          elements: dict
        replicas:
          description: Each active C(per_spare_gpu) entry and the names of its replicas.
          type: dict
          sample: {ollama_spare: [ollama_spare_gpu2, ollama_spare_gpu3]}
        sources:
          description: O(sources), checked, with the defaults filled in.
          type: dict
        downloads:
          description:
            - What the active services need on the host, each once, for
              M(gpufleet.inference.downloads) - C(items) (C(kind) V(image), V(ollama) or
              V(huggingface), C(name), C(services), and C(models_dir) and C(url) for Ollama
              models, C(hf_home) and C(revision) for Hugging Face weights, C(insecure) for
              images) and C(options) (C(ollama_registry), C(ollama_insecure),
              C(ollama_source_dir), C(hf_endpoint), C(hf_token_file)).
          type: dict
        strategy:
          description: The placement strategy, V(null) when nothing was placed.
          type: str
        warnings:
          description: The placement's warnings.
          type: list
          elements: str
        summary:
          description:
            - One line per active service, after the profile line; then the idle GPUs, and why.
          type: list
          elements: str
          sample:
            - profile multi-gpu (compose profiles multi-gpu, multi-gpu-vllm)
            - "ollama: GPU 0 (GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10), 2457 MiB"
            - "ollama_spare_gpu2: GPU 2 (GPU-8c1e...), 2457 MiB"
        idle_gpus:
          description: The indexes of the healthy GPUs no active service is placed on.
          type: list
          elements: int
          sample: [2]
        gpu_assignments:
          description: What C(gpu-assignments.yml) holds, C(strategy) and C(assignments).
          type: dict
    gpus:
      description: C(ansible_facts.gpus) of M(gpufleet.inference.gpu_facts).
      returned: when O(gpus) is not given
      type: list
      elements: dict
    gpu_summary:
      description: C(ansible_facts.gpu_summary) of M(gpufleet.inference.gpu_facts).
      returned: when O(gpus) is not given
      type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement, _plan

# The action's argument spec (plugins/action/services_plan.py validates with it).
ARGUMENT_SPEC = dict(
    catalog=dict(type="dict", required=True),
    profile=dict(type="str", default="auto", choices=list(_plan.PROFILE_CHOICES)),
    mode=dict(type="str", default=""),
    modes=dict(type="dict"),
    dual_gpu_mode=dict(type="str", default=""),
    env_file=dict(type="str", default="/opt/gpufleet/.env"),
    extra_profiles=dict(type="dict", default={}),
    gpus=dict(type="list", elements="dict"),
    gpu_facts_options=dict(type="dict", default={}),
    strategy=dict(type="str", default=_placement.DEFAULT_STRATEGY,
                  choices=list(_placement.STRATEGIES)),
    visible_devices_by=dict(type="str", default="uuid",
                            choices=list(_placement.VISIBLE_DEVICES_BY)),
    placement_options=dict(type="dict", default={}),
    sources=dict(type="dict", default={}),
    secret_environment=dict(type="dict", default={}, no_log=True),
)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    module.fail_json(msg="gpufleet.inference.services_plan runs only as an action on the "
                         "controller (plugins/action/services_plan.py); it was run as a module")


if __name__ == "__main__":
    main()
