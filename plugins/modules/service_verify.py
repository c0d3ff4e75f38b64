#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: service_verify
short_description: Verify that services are healthy, placed as planned and really on their GPU
version_added: 0.1.0
description:
  - One verify for every runtime (compose containers, systemd units, Podman Quadlet services).
    For each service, in
    this order; a failure names the service and what was seen.
  - B(Health.) Every O(services[].url) answers HTTP 200 within O(timeout). Each round also reads
    each service's container (C(docker ps -a) by the compose labels, then C(docker inspect)) or
    unit (C(systemctl show)); a crash ends the wait at once with its exit code and its last 5
    log lines (C(docker logs), C(journalctl)). With compose, the container exited, is dead, is being
    restarted, is gone, or its restart count grew since the first look (services with a
    restart policy show a crash as a restart). With systemd, the unit failed, is inactive, waits
    in C(auto-restart), or its C(NRestarts) grew. With podman, the same of the service Quadlet
    generated (it runs the container, and makes it again when it restarts).
  - B(Placement.) With compose, the container runs and its C(HostConfig.DeviceRequests) ask for
    exactly O(services[].device_id) (none when it is V(null)). With systemd, the unit is active
    and its main process runs with C(CUDA_VISIBLE_DEVICES) = O(services[].cuda_visible_devices)
    (read from C(/proc/<MainPID>/environ)). With podman, the service is active, its container
    O(services[].container) runs (C(podman inspect)), and the GPU device nodes in its
    C(HostConfig.Devices) (C(/dev/nvidia<n>)) are exactly those the host's CDI specs
    (C(/etc/cdi), C(/var/run/cdi); kind C(nvidia.com/gpu)) give the devices
    C(nvidia.com/gpu=<device_id>) of the placement (none for no GPU).
  - B(Placement on an AMD GPU) (O(services[].vendor=amd), or read from the GPU facts when the
    container has no device request or the unit's C(CUDA_VISIBLE_DEVICES) differs). With
    compose, the container runs with no NVIDIA device request, its C(HostConfig.Devices) hold
    C(/dev/kfd) and C(/dev/dri) (or a render node C(/dev/dri/renderD*)), and its environment
    has C(ROCR_VISIBLE_DEVICES) = O(services[].device_id); with systemd, the main process runs
    with that C(ROCR_VISIBLE_DEVICES). The failure names each difference. The GPU check finds
    the AMD GPU by its UUID or, for ROCm's own number, by C(vendor_index) (amd-smi's processes).
  - B(Ollama.) With O(load_models), an O(services[].engine=ollama) service with a
    O(services[].model) is asked to load it (C(POST /api/generate)); on a GPU, C(/api/ps) must
    show it entirely in VRAM (C(size_vram == size)), else it fails with
    C(GPU detected is not GPU used). A model the server does not have fails with Ollama's
    own words (C(model '...' not found)).
  - B(GPU really used.) With O(gpu_check), the GPU O(services[].device_id) (each of them, when
    it names several) must list a process of THIS service holding memory, read through the
    readers of
    M(gpufleet.inference.gpu_facts) (NVML, else nvidia-smi). A process belongs to the service
    when a component of its C(/proc/<pid>/cgroup) path is the container's id (C(<id>),
    C(docker-<id>.scope), C(libpod-<id>.scope)) or the unit's name; cgroup v1 and v2, nested
    containers too. Process names are never used (real vLLM shows as C(python3) or by its
    process title C(VLLM::EngineCore), the lab's stand-in as C(VLLM::EngineCor); Ollama's
    memory is held by its runner subprocess; two instances of one engine look alike). The GPUs are
    read again every O(interval) seconds for up to 15 seconds before this fails.
  - B(Report mode.) With O(fail_on_problem=false) the module does not fail on what it finds;
    a crash ends the wait of that service only, the others are still waited for, placed, and
    checked on their GPU, and each service's RV(services[].problems) says what is wrong
    (RV(problems) lists them all). The health wait and the GPU read last at most O(timeout)
    (not 15 seconds), so a small O(timeout) makes it a snapshot. A service that crashed or has
    no container is not placed nor checked on its GPU. Without O(load_models), an Ollama service
    with a GPU has its C(/api/ps) read (nothing is loaded); a loaded model must be entirely in
    VRAM and held by a process of the service; with no model loaded there is nothing to check
    on its GPU. Bad input still fails.
  - B(Progress.) With a O(timeout) over 10 seconds (outside check mode) its action plugin
    runs the module with a progress file and shows on the controller, every few seconds, each
    service that answered but not yet with 200 (its url's path, the status and what the body
    says, its container's or unit's state, seconds waited of O(timeout)), an Ollama model being
    loaded, and a service that answers 200 after such a line. The task's result is the module's own.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  runtime:
    description: How the services run.
    type: str
    choices: [compose, systemd, podman]
    required: true
  services:
    description: The services to verify, each name once.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The service's name, used in every message.
        type: str
        required: true
      url:
        description:
          - Its health endpoint, C(http://) or C(https://). Without it the service is not
            waited for (its container or unit is still watched and checked).
          - An Ollama service's model is loaded through the same scheme, host and port.
        type: str
      engine:
        description: The inference engine; V(ollama) adds the model check.
        type: str
        choices: [ollama, vllm, other]
        default: other
      model:
        description: The model an Ollama service must hold (loaded with O(load_models)).
        type: str
      device_id:
        description:
          - The GPU UUID (C(GPU-...), or a MIG device's C(MIG-...)) of the placement;
            V(null) (or empty) for no GPU.
          - Several GPUs given together (the N GPUs of a tensor-parallel service, a mode
            switch's) are joined by commas, in the order the device request names them. The
            GPU check (O(gpu_check)) then wants a process of the service holding memory on
            each of them (a tensor-parallel vLLM has one worker per GPU) and names the first
            GPU that has none.
        type: str
      gpu_index:
        description: The GPU's index, for the messages.
        type: int
      vendor:
        description:
          - The vendor of the GPU of the placement; V(amd) checks the device nodes and
            C(ROCR_VISIBLE_DEVICES) instead of an NVIDIA device request.
          - V(null) reads it from the GPU facts where the placement does not look like an
            NVIDIA one.
        type: str
        choices: [nvidia, amd, intel]
      project:
        description: With O(runtime=compose), required; the compose project.
        type: str
      service:
        description: With O(runtime=compose), required; the compose service name.
        type: str
      unit:
        description:
          - With O(runtime=systemd) or O(runtime=podman), required; the unit (C(.service) is
            added when no unit type is given).
        type: str
      container:
        description: With O(runtime=podman), required; the container's name.
        type: str
      cuda_visible_devices:
        description:
          - With O(runtime=systemd), required; the C(CUDA_VISIBLE_DEVICES) its main process
            must run with (a UUID, several joined by commas for a tensor-parallel service, or
            V(-1) for no GPU).
        type: str
  timeout:
    description:
      - Seconds to wait for the health endpoints, and for a model to load.
      - With O(fail_on_problem=false), also the most the GPUs are read again.
    type: float
    default: 180.0
  interval:
    description: Seconds between two rounds.
    type: float
    default: 1.0
  request_timeout:
    description: Seconds one health request may take.
    type: float
    default: 5.0
  load_models:
    description:
      - Load each Ollama service's O(services[].model) and check where it is held.
      - Without it an Ollama service's GPU is not checked (Ollama holds GPU memory only while
        a model is loaded).
    type: bool
    default: true
  gpu_check:
    description: Require a process of each GPU service holding memory on its GPU.
    type: bool
    default: true
  fail_on_problem:
    description:
      - Fail at the first problem (the default), or report every service's problems without
        failing (the report mode, see the description); bad input fails either way.
    type: bool
    default: true
  progress_file:
    description:
      - A file on the host to which the module appends one JSON line (C(item), C(text),
        C(final)) per service when what it waits for changes and at most every 2 seconds
        while it waits. For internal use - the action plugin sets it; set it only when running
        the module without the action.
    type: path
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details:
      - Verifying changes no file and no service; it runs in check mode as well.
      - With O(load_models) an Ollama server loads the model, as on any request to it.
  diff_mode:
    support: none
  idempotent:
    support: full
requirements:
  - The docker CLI with O(runtime=compose); systemctl and journalctl with O(runtime=systemd);
    those and the podman CLI (and PyYAML for YAML CDI specs) with O(runtime=podman).
  - Root (or become) to read another user's C(/proc/<pid>/environ) and the journal.
  - nvidia-ml-py or nvidia-smi on the host for O(gpu_check).
seealso:
  - module: gpufleet.inference.gpu_facts
  - module: gpufleet.inference.gpu_drain_wait
"""

EXAMPLES = r"""
- name: Verify the compose services of the placement
  gpufleet.inference.service_verify:
    runtime: compose
    services:
      - name: vllm
        url: http://127.0.0.1:8000/health
        engine: vllm
        device_id: GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60
        gpu_index: 1
        project: gpufleet
        service: vllm
      - name: ollama
        url: http://127.0.0.1:11434/api/version
        engine: ollama
        model: llama3.2:3b
        device_id: GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10
        gpu_index: 0
        project: gpufleet
        service: ollama
    timeout: 600

- name: Report what each service shows, without failing (a snapshot)
  gpufleet.inference.service_verify:
    runtime: compose
    services:
      - name: vllm
        url: http://127.0.0.1:8000/health
        engine: vllm
        device_id: GPU-0d3f8e2a-5c1b-4a7e-9f60-1b2c3d4e5f60
        project: gpufleet
        service: vllm
    timeout: 2
    load_models: false
    fail_on_problem: false
  register: verified

- name: Verify an Ollama instance run by systemd
  gpufleet.inference.service_verify:
    runtime: systemd
    services:
      - name: ollama_research
        url: http://127.0.0.1:11435/api/version
        engine: ollama
        model: qwen2.5:7b
        device_id: GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10
        unit: ollama@ollama_research.service
        cuda_visible_devices: GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10
  become: true
"""

RETURN = r"""
waited_s:
  description: Seconds the health wait took.
  returned: always
  type: float
  sample: 12.4
crashed:
  description:
    - The service whose container or unit crashed during the wait, or V(null).
    - With O(fail_on_problem=false), the first of them (each one's problems say it).
  returned: always
  type: str
problems:
  description: Every service's problems, in the order of O(services); empty when all is well.
  returned: always
  type: list
  elements: str
  sample:
    - "docling: not healthy within 2 s (http://127.0.0.1:5001/health: HTTP 503)"
services:
  description: One entry per service, in the order given.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: The service's name.
      type: str
    healthy:
      description: Whether its url answered 200; V(null) without a url.
      type: bool
    waited_s:
      description: Seconds until it answered; V(null) when it did not, or without a url.
      type: float
    device_ok:
      description: Whether its container or unit runs with the GPU of its placement; V(null)
        when not reached.
      type: bool
    gpu_processes:
      description: Its processes on its GPU (C(pid), C(name), C(used_memory_mib)).
      type: list
      elements: dict
    gpu_used:
      description: Whether one of them holds memory there; V(null) when not checked.
      type: bool
    model_in_vram:
      description: Whether the Ollama model is entirely in VRAM; V(null) when not checked.
      type: bool
    problems:
      description: What is wrong with it (the texts C(msg) joins), in check order; empty when
        nothing is.
      type: list
      elements: str
  sample:
    - name: vllm
      healthy: true
      waited_s: 41.2
      device_ok: true
      gpu_processes: [{pid: 4242, name: "VLLM::EngineCor", used_memory_mib: 21630}]
      gpu_used: true
      model_in_vram: null
      problems: []
"""

import glob
import time

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.common.yaml import HAS_YAML

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _gpu_facts,
    _gpu_readers,
    _http,
    _verify,
    _waiting,
)

if HAS_YAML:
    from ansible.module_utils.common.yaml import yaml_load
else:
    yaml_load = None

CDI_GLOBS = tuple("%s/*%s" % (d, s) for d in _verify.CDI_DIRS for s in _verify.CDI_SUFFIXES)
# Seconds one docker, systemctl or journalctl call may take before it is stopped.
COMMAND_TIMEOUT_S = 30
# Seconds the GPU readers (NVML, nvidia-smi) may take; nvidia-smi without the persistence
# daemon can take about 30 s on multi-GPU hosts.
GPU_READ_TIMEOUT_S = 60


class Readers:
    """The readers ``_verify.verify`` is given, bound to one module run."""

    def __init__(self, module):
        self.module = module
        self.timeout_bin = module.get_bin_path("timeout", required=True)
        self.bins = {}

    def _run(self, tool, *args, ok_codes=(0,)):
        if tool not in self.bins:
            self.bins[tool] = self.module.get_bin_path(tool, required=True)
        argv = [self.timeout_bin, "--kill-after=2", str(COMMAND_TIMEOUT_S), self.bins[tool],
                *args]
        rc, out, err = self.module.run_command(argv, environ_update={"LANG": "C", "LC_ALL": "C"})
        if rc in (124, 137):
            raise ValueError("%s did not answer within %d seconds and was stopped"
                             % (" ".join([tool, *args]), COMMAND_TIMEOUT_S))
        if rc not in ok_codes:
            raise ValueError("%s failed (rc %d): %s" % (" ".join([tool, *args]), rc,
                                                        (err or out).strip()))
        return rc, out, err

    http = staticmethod(_http.request)

    def ps(self, project):
        return self._run("docker", "ps", "--all", "--quiet", "--no-trunc", "--filter",
                         "label=%s=%s" % (_verify.COMPOSE_PROJECT_LABEL, project))[1]

    def _inspect(self, tool, *args, missing_rc):
        # A container that is not there: the rc says so and the others (if any) are printed.
        rc, out, err = self._run(tool, "inspect", *args, ok_codes=(0, missing_rc))
        if rc != 0 and not out.strip().startswith("["):
            raise ValueError("%s inspect failed (rc %d): %s" % (tool, rc, (err or out).strip()))
        return out

    def inspect(self, ids):
        # A container removed since `docker ps`: rc 1.
        return self._inspect("docker", *ids, missing_rc=1)

    def logs(self, container_id, since=None, until=None):
        # docker logs applies --tail before --until: a window is read whole (its caller
        # keeps the last lines), bounded by since.
        if until:
            window = (["--since", since] if since else []) + ["--until", until]
        else:
            window = ["--tail", str(_verify.LOG_LINES)]
        _rc, out, err = self._run("docker", "logs", *window, container_id, ok_codes=(0, 1))
        return (out or "") + (err or "")

    def podman_inspect(self, name):
        # A container that is not there: rc 125 and "[]" on stdout.
        return self._inspect("podman", "--type", "container", name, missing_rc=125)

    @staticmethod
    def cdi_specs():
        specs = []
        for path in sorted(p for pattern in CDI_GLOBS for p in glob.glob(pattern)):
            with open(path, "rb") as handle:
                text = handle.read().decode("utf-8", "replace")
            specs.append(_verify.parse_cdi_spec(path, text, yaml_load))
        return specs

    def show(self, unit):
        return self._run("systemctl", "show", "-p", ",".join(_verify.SYSTEMD_PROPERTIES),
                         unit)[1]

    def journal(self, unit):
        _rc, out, err = self._run("journalctl", "-u", unit, "-n", str(_verify.LOG_LINES),
                                  "--no-pager", "-o", "cat", ok_codes=(0, 1))
        return out or err

    @staticmethod
    def read(path):
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")

    def gpus(self):
        try:
            collected = _gpu_readers.read_gpus(self.module, timeout=GPU_READ_TIMEOUT_S,
                                               topology=False)
        except _gpu_facts.BackendError as exc:
            raise ValueError(str(exc)) from None
        if not collected["answered"]:
            raise ValueError("no GPU backend answered (%s)" % "; ".join(
                "%s: %s" % (t["backend"], t["detail"]) for t in collected["tried"]))
        return collected["gpus"]


def main():
    service = dict(
        name=dict(type="str", required=True),
        url=dict(type="str"),
        engine=dict(type="str", default="other", choices=list(_verify.ENGINES)),
        model=dict(type="str"),
        device_id=dict(type="str"),
        gpu_index=dict(type="int"),
        vendor=dict(type="str", choices=list(_verify.VENDORS)),
        project=dict(type="str"),
        service=dict(type="str"),
        unit=dict(type="str"),
        cuda_visible_devices=dict(type="str"),
        container=dict(type="str"),
    )
    module = AnsibleModule(
        argument_spec=dict(
            runtime=dict(type="str", required=True, choices=list(_verify.RUNTIMES)),
            services=dict(type="list", elements="dict", required=True, options=service),
            timeout=dict(type="float", default=180.0),
            interval=dict(type="float", default=1.0),
            request_timeout=dict(type="float", default=5.0),
            load_models=dict(type="bool", default=True),
            gpu_check=dict(type="bool", default=True),
            fail_on_problem=dict(type="bool", default=True),
            progress_file=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    watch = _waiting.ServiceWatch(p["runtime"], p["services"], Readers(module),
                                  _waiting.ProgressFile(p["progress_file"], time.monotonic),
                                  time.monotonic, time.sleep, p["timeout"], p["load_models"])
    try:
        result = _verify.verify(
            p["runtime"], p["services"], watch, time.monotonic, watch.sleep,
            timeout_s=p["timeout"], interval_s=p["interval"],
            request_timeout_s=p["request_timeout"], load_models=p["load_models"],
            gpu_check=p["gpu_check"], fail_on_problem=p["fail_on_problem"])
    except ValueError as exc:
        module.fail_json(msg="service_verify: %s" % exc)
    out = dict(changed=False, waited_s=result["waited_s"], crashed=result["crashed"],
               problems=result["problems"], services=result["services"])
    if not result["ok"] and p["fail_on_problem"]:
        module.fail_json(msg=result["msg"], **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
