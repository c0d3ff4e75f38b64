#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: project_files
short_description: Write the files that run the services, atomically, and restore the last set
version_added: 0.1.0
description:
  - Owns the file set of one runtime. V(compose) - C(compose.yml), C(compose.gpu.yml),
    C(compose.podman-gpu.yml), C(.env) and C(gpu-assignments.yml) in O(project_dir).
    V(systemd) - C(ollama@.service) and C(vllm@.service) in O(units_dir) and one
    C(<service>.env) per inference instance in O(env_dir). V(podman) - Quadlet units in
    O(units_dir) (C(gpufleet.network), and C(gpufleet-<service>.container) per active service -
    its image, ports, volumes, CDI GPUs C(nvidia.com/gpu=<id>) or AMD/Intel device nodes) and
    each container's environment file C(<service>.env) (read by Podman) in O(env_dir).
  - With O(state=present) every file is rendered from O(plan) and compared with the disk
    before anything is written; bad input fails before any file or directory is touched.
    Then the set as it is on disk is kept in O(snapshot_dir) (the bytes and mode of every
    file that exists, and which did not exist), and the files that differ are written through
    a temporary file in their own directory and an atomic rename. No backup files.
  - A write that fails (a full disk, say) leaves every file old or new, never half written,
    and no temporary file; the files this run already replaced are put back.
  - C(.env) keeps every key the module does not own. C(gpu-assignments.yml) keeps its
    C(generated_at) while the assignments stay the same. An C(<instance>.env) in O(env_dir)
    (and, for V(podman), a C(gpufleet-<service>.container) in O(units_dir)) the plan no longer
    has is removed.
  - A service whose plan lists a secret environment (its C(secret_environment) names) gets
    C(secrets/<service>.env), mode 0600 in a 0700 folder, in O(project_dir) (read by compose
    through C(env_file)) or in O(env_dir) (read by systemd through C(EnvironmentFile=)), from
    O(secret_env). Its diff shows the names only; the values never reach the result.
  - With O(state=restored) the snapshot is put back byte for byte, atomically; files it
    records as absent are removed (after a first apply, every file of the set), and so are
    C(<instance>.env) files it does not have.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  runtime:
    description: Which file set.
    type: str
    required: true
    choices: [compose, systemd, podman]
  state:
    description:
      - V(present) writes the set of O(plan); V(restored) puts back the set the last
        V(present) found.
    type: str
    default: present
    choices: [present, restored]
  plan:
    description:
      - The C(services_plan) fact set by the C(gpufleet.inference.services) role.
      - Required with O(state=present); not used with O(state=restored).
    type: dict
  snapshot_dir:
    description:
      - Where the set as it was before the last write is kept (mode 0700).
      - Default C(<project_dir>/.gpufleet-previous) for V(compose),
        C(<env_dir>/.gpufleet-previous) for V(systemd).
    type: path
  project_dir:
    description: V(compose) - the directory of the compose project (absolute).
    type: path
    default: /opt/gpufleet
  project_name:
    description: V(compose) - the project's C(name:) and C(COMPOSE_PROJECT_NAME).
    type: str
    default: gpufleet
  compose_runtime:
    description:
      - V(compose) - which GPU overlay C(.env)'s C(COMPOSE_FILE) names when the plan has GPUs;
        V(docker) C(compose.gpu.yml), V(podman) C(compose.podman-gpu.yml). Both are written.
    type: str
    default: docker
    choices: [docker, podman]
  env:
    description:
      - V(compose) - more C(.env) keys this module owns (C(NAME) - value).
      - Must not name C(COMPOSE_PROJECT_NAME), C(COMPOSE_FILE), C(COMPOSE_PROFILES) or
        C(DUAL_GPU_MODE), which are written from O(plan) and the options.
    type: dict
    default: {}
  secret_env:
    description:
      - The secret environment of each service, service name to C(NAME) to value
        (C(services_secret_environment)); its names must be those the plan lists for that
        service. Written to C(secrets/<service>.env) (mode 0600), never shown.
    type: dict
    default: {}
  units_dir:
    description:
      - V(systemd) - where the template units go; default C(/etc/systemd/system).
      - V(podman) - where the Quadlet units go, a directory Quadlet reads; default
        C(/etc/containers/systemd).
    type: path
  env_dir:
    description:
      - V(systemd) - where each instance's C(<service>.env) goes; default
        C(/etc/gpufleet/instances).
      - V(podman) - where each container's C(<service>.env) goes; default
        C(/etc/gpufleet/podman).
    type: path
  models_dir:
    description: V(systemd) - the model directory every Ollama instance shares (C(OLLAMA_MODELS)).
    type: path
    default: /srv/gpufleet/models/ollama
  bind_address:
    description:
      - V(systemd) - the IP address the instances listen on, unless a catalog port gives one.
      - V(podman) - the IP address the containers' ports are published on, unless a catalog
        port gives one.
    type: str
    default: 127.0.0.1
  user:
    description: V(systemd) - the account the instances run as.
    type: str
    default: gpufleet
  group:
    description: V(systemd) - the group the instances run as.
    type: str
    default: gpufleet
  ollama_bin:
    description: V(systemd) - the Ollama executable.
    type: path
    default: /usr/local/bin/ollama
  vllm_bin:
    description: V(systemd) - the vLLM executable.
    type: path
    default: /usr/local/bin/vllm
  state_dir_name:
    description: V(systemd) - each instance's state is in C(/var/lib/<state_dir_name>/<instance>).
    type: str
    default: gpufleet
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details: In check mode nothing is written and no directory is created; the result and the
      diff say what would change.
  diff_mode:
    support: full
  idempotent:
    support: full
requirements:
  - PyYAML on the host with O(runtime=compose).
seealso:
  - module: gpufleet.inference.service_verify
"""

EXAMPLES = r"""
- name: Write the compose files, .env and gpu-assignments.yml
  gpufleet.inference.project_files:
    runtime: compose
    plan: "{{ services_plan }}"
    project_dir: /opt/gpufleet
    env:
      OLLAMA_KEEP_ALIVE: 24h
  register: project

- name: Write the template units and the environment file of each instance
  gpufleet.inference.project_files:
    runtime: systemd
    plan: "{{ services_plan }}"
    models_dir: /srv/gpufleet/models/ollama

- name: Write the Quadlet units and the environment file of each container
  gpufleet.inference.project_files:
    runtime: podman
    plan: "{{ services_plan }}"
  register: quadlet

- name: Put the last good compose files back
  gpufleet.inference.project_files:
    runtime: compose
    state: restored
    project_dir: /opt/gpufleet
"""

RETURN = r"""
diff:
  description: One entry per file that changed (C(before) is empty for a new file).
  returned: always
  type: list
  elements: dict
  contains:
    before_header:
      description: The file's path.
      type: str
    after_header:
      description: The file's path.
      type: str
    before:
      description: The file's text before.
      type: str
    after:
      description: The file's text after (empty for a removed file).
      type: str
files:
  description: Every file of the set and what became of it.
  returned: always
  type: list
  elements: dict
  contains:
    path:
      description: The file.
      type: str
    state:
      description: V(created), V(changed), V(unchanged) or V(removed).
      type: str
  sample: [{path: /opt/gpufleet/compose.yml, state: changed}]
snapshot_dir:
  description: Where the set as it was before the last write is kept.
  returned: always
  type: str
  sample: /opt/gpufleet/.gpufleet-previous
compose_files:
  description:
    - C(COMPOSE_FILE) as a list. With O(state=restored), read from the restored C(.env)
      (C(compose.yml) when there is none).
  returned: when O(runtime=compose)
  type: list
  elements: str
  sample: [compose.yml, compose.gpu.yml]
compose_profiles:
  description:
    - The compose profiles. With O(state=restored), read from the restored C(.env).
  returned: when O(runtime=compose)
  type: list
  elements: str
  sample: [dual-gpu, dual-gpu-mixed]
services:
  description:
    - The services the restored compose files start with their profiles (what
      C(docker compose config --services) lists), sorted.
  returned: when O(runtime=compose) and O(state=restored)
  type: list
  elements: str
  sample: [docling, ollama, ollama_research, vision]
services_changed:
  description:
    - Active services whose definition (C(compose.yml) and the overlay in C(COMPOSE_FILE))
      differs from the one on disk, or that did not run under the files on disk - what C(up)
      would create or recreate.
  returned: when O(runtime=compose) and O(state=present)
  type: list
  elements: str
services_removed:
  description: Services that ran under the files on disk and are not active any more.
  returned: when O(runtime=compose) and O(state=present)
  type: list
  elements: str
instances:
  description:
    - The instance units of the plan. With O(state=restored), those whose environment files
      were restored.
    - V(podman) - the services systemd generates from the containers
      (C(gpufleet-<service>.service)).
  returned: when O(runtime=systemd) or O(runtime=podman)
  type: list
  elements: str
  sample: [ollama@ollama.service, vllm@vllm.service]
units_changed:
  description:
    - A template unit (V(systemd)) or a Quadlet unit (V(podman)) changed (C(daemon-reload)
      needed).
  returned: when O(runtime=systemd) or O(runtime=podman), and O(state=present)
  type: bool
restart:
  description:
    - Instance units whose environment file or template unit changed; V(podman) - services
      whose container unit, environment file or secret file changed.
  returned: when O(runtime=systemd) or O(runtime=podman), and O(state=present)
  type: list
  elements: str
stale_instances:
  description:
    - Instance units whose environment file was removed (no longer in the plan); V(podman) -
      services whose container unit was removed.
  returned: when O(runtime=systemd) or O(runtime=podman), and O(state=present)
  type: list
  elements: str
verify:
  description:
    - What gpufleet.inference.service_verify checks for each active service - C(name),
      C(engine), C(model), C(url) (the health endpoint, or null), C(device_id) and C(gpu_index)
      of the placement (null on the CPU); compose adds C(project) and C(service), systemd
      C(unit) and C(cuda_visible_devices), podman C(unit) and C(container).
  returned: when O(state=present)
  type: list
  elements: dict
previous_existed:
  description: The snapshot holds at least one file (false after a first apply).
  returned: when O(state=restored)
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.common.yaml import HAS_YAML

from ansible_collections.gpufleet.inference.plugins.module_utils import _fileset

if HAS_YAML:
    from ansible.module_utils.common.yaml import yaml_dump, yaml_load
else:
    yaml_dump = yaml_load = None

OPTIONS = ("project_dir", "project_name", "compose_runtime", "env", "units_dir", "env_dir",
           "models_dir", "bind_address", "user", "group", "ollama_bin", "vllm_bin",
           "state_dir_name", "snapshot_dir", "secret_env")


def main():
    module = AnsibleModule(
        argument_spec=dict(
            runtime=dict(type="str", required=True, choices=["compose", "systemd", "podman"]),
            state=dict(type="str", default="present", choices=["present", "restored"]),
            plan=dict(type="dict"),
            snapshot_dir=dict(type="path"),
            project_dir=dict(type="path", default="/opt/gpufleet"),
            project_name=dict(type="str", default="gpufleet"),
            compose_runtime=dict(type="str", default="docker", choices=["docker", "podman"]),
            env=dict(type="dict", default={}),
            secret_env=dict(type="dict", default={}, no_log=True),
            units_dir=dict(type="path"),  # the runtime's default (module_utils/_fileset.py)
            env_dir=dict(type="path"),
            models_dir=dict(type="path", default="/srv/gpufleet/models/ollama"),
            bind_address=dict(type="str", default="127.0.0.1"),
            user=dict(type="str", default="gpufleet"),
            group=dict(type="str", default="gpufleet"),
            ollama_bin=dict(type="path", default="/usr/local/bin/ollama"),
            vllm_bin=dict(type="path", default="/usr/local/bin/vllm"),
            state_dir_name=dict(type="str", default="gpufleet"),
        ),
        required_if=[("state", "present", ["plan"])],
        supports_check_mode=True,
    )
    p = module.params
    options = {key: p[key] for key in OPTIONS}

    def mover(src, dest):
        try:
            module.atomic_move(src, dest)
        except OSError:
            raise
        except Exception as exc:  # atomic_move raises a bare Exception for a failed rename
            raise OSError(str(exc)) from exc

    if p["state"] == "present" and p["runtime"] == "compose" and not HAS_YAML:
        module.fail_json(msg=missing_required_lib("PyYAML"))
    try:
        if p["state"] == "present":
            result = _fileset.present(p["runtime"], p["plan"], options, module.check_mode,
                                      yaml_dump=yaml_dump, yaml_load=yaml_load, mover=mover)
        else:
            result = _fileset.restored(p["runtime"], options, module.check_mode, mover=mover,
                                       yaml_load=yaml_load)
    except (ValueError, _fileset.FilesetError) as exc:
        module.fail_json(msg="project_files: %s" % exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
