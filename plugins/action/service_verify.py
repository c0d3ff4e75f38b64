# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action service_verify: verify the services, showing what each one still waits for.

Documentation: plugins/modules/service_verify.py. The health wait lasts up to ``timeout``
seconds (180 by default, 600 for slow model loads), and Ansible prints a task's result only when
it ends. So with a ``timeout`` over ``DIRECT_MAX_S`` (outside check mode) the module runs with
a progress file through plugin_utils/_progress.py, and every few seconds the controller shows
each service that answered but not yet with 200, e.g. ``<host>: vllm: /health 503 (loading),
container running, 40 s of 600 s``. A short wait (the health role's snapshot), check mode and
a ``timeout`` that is not a number (the module says why) run the module directly. The task's
result is the module's own.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _verify
from ansible_collections.gpufleet.inference.plugins.plugin_utils._progress import (
    ProgressAction,
    number_option,
)

DEFAULT_TIMEOUT_S = 180.0
# A wait this short is over before a progress line could be shown: run as a plain task.
DIRECT_MAX_S = 10.0
# Beyond the health wait and the model loads: the GPU check and the docker/systemctl calls.
JOB_MARGIN_S = _verify.GPU_SETTLE_S + 300


def job_seconds(timeout, services):
    """The longest the module may run: the health wait, then each Ollama model's load (each
    waits up to ``timeout``), then the GPU check, with a margin."""
    loads = sum(1 for s in services if isinstance(s, dict) and s.get("engine") == "ollama") \
        if isinstance(services, list) else 0
    return int(timeout * (1 + loads) + JOB_MARGIN_S)


class ActionModule(ProgressAction):

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        timeout = number_option(args.get("timeout", DEFAULT_TIMEOUT_S))
        if self._task.check_mode or timeout is None or timeout <= DIRECT_MAX_S:
            result.update(self.run_directly(task_vars))
            return result
        result.update(self.run_with_progress(
            task_vars, args, job_s=job_seconds(timeout, args.get("services")),
            what="the service_verify job"))
        return result
