# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the GPU backend readers, bound to one module run.

Not a public API: the leading underscore says so. ``read_gpus(module, ...)`` is what the
gpu_facts module gathers, callable from any module of the collection (service_verify reads
the GPUs' processes with it): NVML through nvidia-ml-py, else nvidia-smi; amd-smi, rocm-smi,
sysfs. The choice, order and fallbacks are ``_gpu_facts.gather``'s; this file only runs the
readers. ``module`` is used for ``get_bin_path`` and ``run_command``; nothing here imports
AnsibleModule.
"""

from __future__ import annotations

import os
import threading
import traceback

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _amd_smi,
    _gpu_facts,
    _nvidia_smi,
    _nvml,
    _sysfs,
)

try:
    import pynvml
except ImportError:
    HAS_PYNVML = False
    PYNVML_IMP_ERR = traceback.format_exc()
else:
    HAS_PYNVML = True
    PYNVML_IMP_ERR = None


class Readers:
    """The backend readers, bound to one module run (commands, timeout, roots)."""

    def __init__(self, module, timeout, sysfs_root="/", include_integrated=False,
                 topology=True, meminfo_path=None):
        self.module = module
        self.topology = topology
        self.timeout = timeout
        self.root = sysfs_root
        self.include_integrated = include_integrated
        self.memory_mib = _gpu_facts.read_meminfo_mib(
            meminfo_path or os.path.join(self.root, "proc", "meminfo"))

    def mapping(self):
        return {
            "nvml": self.nvml,
            "nvidia-smi": lambda: self.tool("nvidia-smi", _nvidia_smi.collect,
                                            topology=self.topology),
            "amd-smi": lambda: self.tool("amd-smi", _amd_smi.collect_amd_smi),
            "rocm-smi": lambda: self.tool("rocm-smi", _amd_smi.collect_rocm_smi),
            "sysfs": self.sysfs,
        }

    def nvml(self):
        if not HAS_PYNVML:
            raise _gpu_facts.BackendUnavailable("the Python library nvidia-ml-py is not installed")
        box = {}

        def work():
            try:
                box["result"] = _nvml.read_gpus(pynvml, system_memory_mib=self.memory_mib,
                                                topology=self.topology)
            except BaseException as exc:  # handed to the caller's thread below
                box["error"] = exc

        thread = threading.Thread(target=work, name="nvml", daemon=True)
        thread.start()
        thread.join(self.timeout)
        if thread.is_alive():
            raise _gpu_facts.BackendError(
                "nvml", "the NVML library did not answer within %d seconds" % self.timeout)
        error = box.get("error")
        if isinstance(error, _nvml.NvmlUnavailable):
            raise _gpu_facts.BackendUnavailable(str(error))
        if error is not None:
            raise _gpu_facts.BackendError("nvml", "%s: %s" % (type(error).__name__, error))
        return box["result"]

    def tool(self, name, collect, **options):
        path = self.module.get_bin_path(name)
        if path is None:
            raise _gpu_facts.BackendUnavailable("%s is not on PATH" % name)
        timeout_bin = self.module.get_bin_path("timeout", required=True)

        def run(argv):
            command = [timeout_bin, "--kill-after=2", str(self.timeout), path, *argv[1:]]
            rc, out, err = self.module.run_command(
                command, environ_update={"LANG": "C", "LC_ALL": "C"})
            if rc in (124, 137):
                raise _gpu_facts.BackendError(
                    name, "%s did not answer within %d seconds and was stopped"
                    % (" ".join([name, *argv[1:]]), self.timeout))
            said = _gpu_facts.no_gpu_reason(rc, out + err)
            if said:
                # No driver loaded, or a driver without a GPU: nothing to read, not a fault.
                raise _gpu_facts.BackendUnavailable("%s: %s" % (name, said))
            return rc, out, err

        try:
            return collect(run, system_memory_mib=self.memory_mib, **options)
        except ValueError as exc:
            raise _gpu_facts.BackendError(name, str(exc)) from exc

    def sysfs(self):
        try:
            result = _sysfs.collect_sysfs(root=self.root, system_memory_mib=self.memory_mib,
                                          include_integrated=self.include_integrated)
        except ValueError as exc:
            raise _gpu_facts.BackendError("sysfs", str(exc)) from exc
        if result is None:
            raise _gpu_facts.BackendUnavailable("no /sys/class/drm on this host")
        return result


def read_gpus(module, backend="auto", timeout=60, sysfs_root="/", include_integrated=False,
              topology=True, meminfo_path=None):
    """``_gpu_facts.gather``'s result for this host: {'gpus', 'answered', 'tried', 'warnings',
    'driver_version', 'cuda_driver_version'}; raises ``_gpu_facts.BackendError``.
    ``include_integrated`` counts an integrated GPU that shares the host's memory (the
    Intel iGPU) as an inference GPU; by default it is left out with a warning.
    ``topology=False`` skips reading the links between GPUs (NVML's topology calls,
    ``nvidia-smi topo -m``): each GPU's ``topology`` is then None. ``meminfo_path`` is where
    the system memory of unified-memory GPUs is read (default ``<sysfs_root>/proc/meminfo``)."""
    readers = Readers(module, timeout, sysfs_root, include_integrated, topology, meminfo_path)
    return _gpu_facts.gather(backend, readers.mapping())
