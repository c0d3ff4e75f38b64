# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action host_lock: take the host lock, showing who holds it while this run waits.

Documentation: plugins/modules/host_lock.py. The wait for a lock another run holds lasts up to
``timeout`` seconds (600 by default), and Ansible prints a task's result only when it ends. So
``state: present`` (outside check mode, with a ``timeout`` over 0) first runs the module once
with ``timeout: 0``, as a plain task: a free lock (the usual case) is taken at once, at no cost.
Only when that try finds the lock held does the module run again with its own ``timeout``,
with a progress file, through plugin_utils/_progress.py: every few seconds the controller shows
``<host>: host lock held by <controller> pid <pid> since <time>: waited 30 s of 600 s``.

The task's result is the module's own: the first try's (its ``invocation`` showing the task's
``timeout``), else the waiting run's. A first try that fails on bad input (its message starts
with ``host_lock:``) is the result; so are check mode and ``state: absent``, run directly.
"""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.plugin_utils._progress import (
    GRACE_S,
    ProgressAction,
    number_option,
)

DEFAULT_TIMEOUT_S = 600


class ActionModule(ProgressAction):

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        args = dict(self._task.args)
        timeout = number_option(args.get("timeout", DEFAULT_TIMEOUT_S), int)
        if self._task.check_mode or args.get("state", "present") != "present" \
                or timeout is None or timeout <= 0:
            result.update(self.run_directly(task_vars))
            return result
        first = self.run_directly(task_vars, dict(args, timeout=0))
        held = first.get("failed") and first.get("acquired") is False \
            and not str(first.get("msg", "")).startswith("host_lock: ")
        if not held:
            module_args = (first.get("invocation") or {}).get("module_args")
            if isinstance(module_args, dict) and "timeout" in module_args:
                module_args["timeout"] = timeout
            result.update(first)
            return result
        result.update(self.run_with_progress(task_vars, args, job_s=timeout + GRACE_S,
                                             what="the host_lock job"))
        return result
