# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action downloads: run the downloads module on the host and show its progress meanwhile.

Documentation: plugins/modules/downloads.py. Ansible prints a task's result only when it ends,
and pulls take minutes, so with ``state: present`` (outside check mode) the module runs with a
``progress_file`` on the host while the action reads the file's new lines every ``POLL_S``
seconds with one ``tail -c +<offset>``; it prints an item's first line and the line that ends
it, between them at most one every ``SHOW_EVERY_S`` seconds. The module's own result (a failure
included) is the task's result. ``state: planned`` and check mode run the module directly.

The loop is ``plugin_utils/_progress.py``'s, shared with host_lock and service_verify.
The host sends back only what the module returns and its progress lines; neither holds the
token of ``hf_token_file``, which the module reads on the host and masks.
"""

from __future__ import annotations

import copy

from ansible_collections.gpufleet.inference.plugins.module_utils import _downloads
from ansible_collections.gpufleet.inference.plugins.modules.downloads import ARGUMENT_SPEC
from ansible_collections.gpufleet.inference.plugins.plugin_utils._progress import (
    ProgressAction,
    ProgressReader,
)

__all__ = ["ActionModule", "ProgressReader"]

POLL_S = 2.0
# Beyond the module's own timeout: the async wrapper's limit, then the controller's patience.
GRACE_S = 120


class ActionModule(ProgressAction):

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        task_vars = task_vars or {}
        _validation, args = self.validate_argument_spec(argument_spec=copy.deepcopy(ARGUMENT_SPEC))
        try:
            # A plan's downloads become items here: the host gets only what it fetches.
            self._task.args = _downloads.expand(
                {k: v for k, v in self._task.args.items() if v is not None})
        except ValueError as exc:
            self._remove_tmp_path(self._connection._shell.tmpdir)
            return dict(result, failed=True, changed=False, msg="downloads: %s" % exc)
        if args["state"] == "planned" or self._task.check_mode:
            result.update(self.run_directly(task_vars))
            return result
        result.update(self.run_with_progress(
            task_vars, self._task.args, job_s=args["timeout"] + GRACE_S,
            what="the downloads job", poll_s=POLL_S, patience_s=args["timeout"] + 2 * GRACE_S))
        return result
