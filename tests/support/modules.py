# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run a module's ``main()`` in-process, as Ansible would run it on the host, for unit tests."""

from __future__ import annotations

import contextlib
import json
from unittest import mock

import pytest
from ansible.module_utils import basic

try:
    from ansible.module_utils.testing import patch_module_args
except ImportError:  # ansible-core < 2.19
    @contextlib.contextmanager
    def patch_module_args(args):
        data = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode()
        with mock.patch.object(basic, "_ANSIBLE_ARGS", data):
            yield


class _Exit(Exception):
    pass


def run_module(main, args, check_mode=False, diff=False):
    """The result ``main`` exits with, or its failure with ``failed: true``."""
    args = dict(args, _ansible_check_mode=check_mode, _ansible_diff=diff)

    def exit_json(self, **result):
        raise _Exit(result)

    def fail_json(self, **result):
        raise _Exit(dict(result, failed=True))

    with patch_module_args(args), \
            mock.patch.object(basic.AnsibleModule, "exit_json", exit_json), \
            mock.patch.object(basic.AnsibleModule, "fail_json", fail_json):
        with pytest.raises(_Exit) as done:
            main()
    return done.value.args[0]
