# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers to run the collection's modules for real through ansible's own command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def ansible_env(**extra):
    env = dict(os.environ)
    env.update(
        ANSIBLE_CONFIG=str(REPO / "ansible.cfg"),
        ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
        ANSIBLE_CALLBACK_RESULT_FORMAT="json",
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_HOST_KEY_CHECKING="0",
    )
    env.update({key: str(value) for key, value in extra.items()})
    return env


def run_module(module, args="", env=None, check=False, collections_path=None, python=None,
               timeout=180):
    """Run ``ansible localhost -m module -a args``; return (rc, task result dict)."""
    command = [str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
               "-m", module, "-e", "ansible_python_interpreter=%s" % (python or sys.executable)]
    if args:
        command += ["-a", args]
    if check:
        command.append("--check")
    run_env = ansible_env(**(env or {}))
    if collections_path:
        run_env["ANSIBLE_COLLECTIONS_PATH"] = str(collections_path)
    run_env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.builtin.minimal"
    proc = subprocess.run(command, env=run_env, capture_output=True, text=True,
                          timeout=timeout, check=False, cwd=str(REPO))
    # minimal prints "localhost | SUCCESS => {...}" (or FAILED!): the JSON follows "=> ".
    sep, document = proc.stdout.partition(" => ")[1:]
    try:
        result = json.loads(document) if sep else None
    except ValueError:
        result = None
    if result is None:
        raise AssertionError("ansible printed no result (rc %d):\n%s\n%s"
                             % (proc.returncode, proc.stdout, proc.stderr))
    result["_stderr"] = proc.stderr
    return proc.returncode, result


@pytest.fixture
def ansible_module():
    return run_module
