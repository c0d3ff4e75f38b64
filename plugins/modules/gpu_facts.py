#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: gpu_facts
short_description: Read every GPU of a host, with live memory use and the processes holding it
version_added: 0.1.0
description:
  - Returns C(ansible_facts.gpus), one entry per GPU (NVIDIA, AMD, Intel; dedicated or unified
    memory; MIG devices), and C(ansible_facts.gpu_summary) with the recommended inference profile.
  - Values a backend cannot tell are V(null), never V(0) or V(N/A).
  - A host without a GPU driver or library returns RV(ansible_facts.gpus=[]) and a warning, and
    the module succeeds unless O(fail_on_missing=true).
  - One GPU failing (for example I(GPU is lost)) marks that GPU C(healthy=false) with the error and
    keeps the others.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  backend:
    description:
      - Where to read GPUs from.
      - V(auto) reads NVIDIA GPUs through V(nvml), else V(nvidia-smi); AMD GPUs through
        V(amd-smi), else V(rocm-smi), else V(sysfs); Intel GPUs through V(sysfs). The backends
        that answered are in RV(ansible_facts.gpu_summary.backend).
      - V(nvml) needs the Python library nvidia-ml-py on the host.
    type: str
    choices: [auto, nvml, nvidia-smi, amd-smi, rocm-smi, sysfs]
    default: auto
  timeout:
    description:
      - Seconds a vendor tool or the NVML library may take before it is stopped and the read fails
        with a message saying so. nvidia-smi can take about 30 seconds on multi-GPU VMs without
        the persistence daemon.
      - 1 to 3600.
    type: int
    default: 60
  fail_on_missing:
    description:
      - Fail when no backend is available (no driver, no library, no tool) instead of returning
        an empty list with a warning.
    type: bool
    default: false
  sysfs_root:
    description:
      - Root under which C(sys/class/drm) and C(proc/meminfo) are read. Only useful to read a
        copied or simulated tree.
    type: path
    default: /
  meminfo_path:
    description:
      - Where the system memory is read (C(MemTotal)), which is the memory of a unified-memory
        GPU (NVIDIA GB10, Jetson; NVML reports no size there). Defaults to
        C(<sysfs_root>/proc/meminfo).
      - Another file in the same format serves a simulated host whose C(/proc/meminfo) is not
        the simulated machine's.
    type: path
  include_integrated:
    description:
      - Count an integrated GPU that shares the host's memory and is made for display (the
        Intel GPU of the CPU, at PCI C(0000:00:02.0)) as an inference GPU.
      - By default it is left out of RV(ansible_facts.gpus) and a warning names it, so that an
        NVIDIA workstation with an Intel CPU is not taken for a two-GPU host.
      - Parts built around unified memory for compute (NVIDIA GB10 and Jetson, AMD APUs read
        through amd-smi) are counted either way.
    type: bool
    default: false
extends_documentation_fragment:
  - gpufleet.inference.attributes
  - gpufleet.inference.attributes.facts
attributes:
  check_mode:
    support: full
    details: Reading facts changes nothing.
  diff_mode:
    support: none
  facts:
    support: full
  idempotent:
    support: full
requirements:
  - nvidia-ml-py for O(backend=nvml) (and for the first choice of O(backend=auto)).
notes:
  - PCI bus ids are normalised to the Linux form C(0000:01:00.0) whatever the tool printed.
  - C(index) is unique on the host. NVIDIA GPUs keep their own numbers (NVML and nvidia-smi
    enumerate in PCI bus order, what C(CUDA_VISIBLE_DEVICES) means with
    C(CUDA_DEVICE_ORDER=PCI_BUS_ID)). When the GPUs of another vendor would reuse a number, that
    vendor's GPUs are numbered after the ones already counted and a warning says so; their own
    number (what C(ROCR_VISIBLE_DEVICES) or C(ZE_AFFINITY_MASK) mean) stays in C(vendor_index).
    Use the UUID to pin a service to a GPU.
  - Numbers a tool reports that cannot be true (negative memory, free memory over the total, the
    2^64-1 "not available" value, a utilization over 100 %) are returned as V(null) with a warning
    naming the GPU and the field.
seealso:
  - module: gpufleet.inference.gpu_placement
"""

EXAMPLES = r"""
- name: Gather GPU facts
  gpufleet.inference.gpu_facts:

- name: Read through nvidia-smi only, waiting at most 10 seconds
  gpufleet.inference.gpu_facts:
    backend: nvidia-smi
    timeout: 10

- name: Show the recommended profile
  ansible.builtin.debug:
    msg: "{{ ansible_facts.gpu_summary.recommended_profile }}"
"""

RETURN = r"""
ansible_facts:
  description: GPU facts of the host.
  returned: always
  type: complex
  contains:
    gpus:
      description: One entry per GPU, in the backend's index order.
      returned: always
      type: list
      elements: dict
      contains:
        index:
          description:
            - The GPU's number on this host, unique among its GPUs. V(null) only for a GPU
              that is not healthy (one that fell off the bus and that the tool could not
              number).
          type: int
        vendor_index:
          description:
            - The vendor's own number for the GPU (CUDA's for NVIDIA, ROCm's for AMD, Level
              Zero's for Intel), the number C(CUDA_VISIBLE_DEVICES), C(ROCR_VISIBLE_DEVICES)
              or C(ZE_AFFINITY_MASK) mean. Equal to C(index) unless the GPU was renumbered
              because another vendor's GPU has the same number.
          type: int
        memory_kind:
          description:
            - V(dedicated) for a GPU with its own memory, V(unified) for a part known to share
              the host's memory (NVIDIA GB10 and Jetson, the Intel integrated GPU), whose
              C(memory_total_mib) is the host's memory.
            - A discrete GPU whose tool cannot tell its memory size stays V(dedicated) with
              C(memory_total_mib=null) and a warning; it is never given the host's memory.
          type: str
        healthy:
          description:
            - V(false) when the GPU failed (for example fell off the bus), or has no index.
          type: bool
        errors:
          description:
            - Why the GPU is not healthy, in the tool's words, naming the GPU by its PCI bus id
              or UUID when known; never empty when C(healthy) is V(false).
          type: list
          elements: str
        topology:
          description:
            - How this GPU reaches each other GPU of the host, one entry per peer sorted by
              the peer's C(index), from NVML (C(nvmlDeviceGetTopologyCommonAncestor) and the
              NVLink calls) or from C(nvidia-smi topo -m).
            - V([]) on a host with one GPU. V(null) when it could not be read (AMD and Intel
              GPUs, a driver or tool that does not tell, a failed call; a warning then says
              why); reading it never fails the module.
            - Peers that were lost (no handle) are left out; MIG devices are never peers.
          type: list
          elements: dict
          contains:
            index:
              description: The peer GPU's C(index).
              type: int
            uuid:
              description: The peer GPU's UUID, V(null) when unknown.
              type: str
            link:
              description:
                - V(nvlink) when the two GPUs share active NVLinks (directly, or both through
                  NVSwitches), else the PCIe path between them.
                - V(pcie_switch) through PCIe switches only (nvidia-smi PIX or PXB),
                  V(host_bridge) through a PCIe host bridge (PHB), V(numa) between host
                  bridges of one NUMA node (NODE), V(system) across NUMA nodes (SYS).
                - Placement prefers, fastest first, V(nvlink), V(pcie_switch),
                  V(host_bridge), V(numa), V(system).
              type: str
              choices: [nvlink, pcie_switch, host_bridge, numa, system]
            nvlink_count:
              description: The number of NVLinks bonded between the two (nvidia-smi NV#);
                V(null) unless C(link) is V(nvlink).
              type: int
      sample:
        - index: 0
          vendor_index: 0
          uuid: GPU-5b5d9ab2-8d59-7bd6-2b3a-1c7b4c3a6f10
          name: NVIDIA RTX A5500
          vendor: nvidia
          pci_bus_id: "0000:01:00.0"
          memory_total_mib: 24564
          memory_used_mib: 19304
          memory_free_mib: 4930
          memory_reserved_mib: 330
          memory_kind: dedicated
          compute_capability: "8.6"
          driver_version: "590.48.01"
          cuda_driver_version: "13.1"
          mig_mode: disabled
          mig_devices: []
          power_limit_w: 230.0
          temperature_c: 45
          utilization_pct: 12
          processes:
            - pid: 4242
              name: /usr/bin/ollama
              used_memory_mib: 18974
          healthy: true
          errors: []
          topology:
            - index: 1
              uuid: GPU-5a1c0d3e-1a2b-4c3d-8e9f-a40000000001
              link: numa
              nvlink_count: null
    gpu_summary:
      description: Counts, memory and the recommended profile.
      returned: always
      type: dict
      contains:
        count:
          description: Number of GPUs found, healthy or not.
          type: int
        healthy_count:
          description: Number of GPUs that answered without error.
          type: int
        vendors:
          description: Vendors found, sorted.
          type: list
          elements: str
        total_memory_mib:
          description: Memory of the healthy GPUs, in MiB.
          type: int
        free_memory_mib:
          description: Free memory of the healthy GPUs, in MiB.
          type: int
        backend:
          description: The backends that answered, joined by C(+); V(null) when none did.
          type: str
        backends_tried:
          description: Every backend tried, with its outcome (V(ok), V(unavailable), V(error)).
          type: list
          elements: dict
        driver_version:
          description: The driver version the first answering backend reported.
          type: str
        recommended_profile:
          description: V(cpu), V(single-gpu), V(dual-gpu) or V(multi-gpu), from the healthy GPUs.
          type: str
        warnings:
          description: Everything worth a look, one sentence each.
          type: list
          elements: str
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib

from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_facts, _gpu_readers

# An hour: a longer wait on one tool is a typo, not a slow driver.
MAX_TIMEOUT_S = 3600


def main():
    module = AnsibleModule(
        argument_spec=dict(
            backend=dict(type="str", default="auto", choices=list(_gpu_facts.BACKENDS)),
            timeout=dict(type="int", default=60),
            fail_on_missing=dict(type="bool", default=False),
            sysfs_root=dict(type="path", default="/"),
            include_integrated=dict(type="bool", default=False),
            meminfo_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    if params["timeout"] < 1:
        module.fail_json(msg="timeout must be >= 1 second; got: %d" % params["timeout"])
    if params["timeout"] > MAX_TIMEOUT_S:
        module.fail_json(msg="timeout must be at most %d seconds; got: %d"
                         % (MAX_TIMEOUT_S, params["timeout"]))
    if params["backend"] == "nvml" and not _gpu_readers.HAS_PYNVML:
        module.fail_json(msg=missing_required_lib("nvidia-ml-py"),
                         exception=_gpu_readers.PYNVML_IMP_ERR)

    try:
        collected = _gpu_readers.read_gpus(module, params["backend"], params["timeout"],
                                           params["sysfs_root"], params["include_integrated"],
                                           meminfo_path=params["meminfo_path"])
    except _gpu_facts.BackendError as exc:
        module.fail_json(msg="Reading GPUs failed: %s" % exc, backend=exc.backend)

    gpus = collected["gpus"]
    warnings = collected["warnings"]
    if not collected["answered"]:
        detail = "; ".join("%s: %s" % (t["backend"], t["detail"]) for t in collected["tried"])
        if params["fail_on_missing"]:
            module.fail_json(msg="No GPU backend is available on this host (%s)" % detail)
        warnings.append("No GPU found: no GPU driver, library or tool answered (%s)" % detail)

    summary = _gpu_facts.summarize(gpus, collected["answered"], collected["driver_version"],
                                   warnings)
    summary["backends_tried"] = collected["tried"]
    for warning in summary["warnings"]:
        module.warn(warning)
    module.exit_json(changed=False, ansible_facts={"gpus": gpus, "gpu_summary": summary})


if __name__ == "__main__":
    main()
