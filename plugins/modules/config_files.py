#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: config_files
short_description: Write a few configuration files and their directories in one module run
version_added: 0.2.0
description:
  - Creates the O(directories) that are missing (and sets the mode of those that have another
    one), then writes each file of O(files) and O(secret_files) whose content or mode differs
    from the disk, through a temporary file in its own directory and an atomic rename. Files
    that are as given are not touched, so a second run changes nothing.
  - One module run for the whole set, where a loop of M(ansible.builtin.file) and
    M(ansible.builtin.template) costs a few commands on the host per file. Render the content
    on the controller (for example with the C(ansible.builtin.template) lookup).
  - Every path and mode is checked before anything is read or written; bad input fails naming
    the option, the entry and the value (never a secret file's content).
  - The content of O(secret_files) never reaches the output; it is masked in the invocation,
    and the diff says only that the file was created or rewritten.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  directories:
    description: Directories to create with their parents (parents get 0755).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: An absolute path.
        type: str
        required: true
      mode:
        description: The directory's mode, an octal string such as V('0750').
        type: str
        required: true
  files:
    description: Files whose content may be shown (in the diff).
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: An absolute path; its directory must exist or be in O(directories).
        type: str
        required: true
      content:
        description: The whole content of the file.
        type: str
        required: true
      mode:
        description: The file's mode, an octal string such as V('0644').
        type: str
        required: true
  secret_files:
    description: Files that may hold keys or tokens; their content is never shown.
    type: list
    elements: dict
    default: []
    suboptions:
      path:
        description: An absolute path; its directory must exist or be in O(directories).
        type: str
        required: true
      content:
        description: The whole content of the file (masked in the invocation).
        type: str
        required: true
      mode:
        description: The file's mode, an octal string such as V('0600').
        type: str
        required: true
  backup:
    description:
      - Keep a copy of a file before it is rewritten, beside it, named with a timestamp (as
        M(ansible.builtin.template) names its backups).
    type: bool
    default: false
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
seealso:
  - module: ansible.builtin.template
  - module: gpufleet.inference.project_files
"""

EXAMPLES = r"""
- name: Write the router's configuration
  gpufleet.inference.config_files:
    directories:
      - path: /opt/gpufleet/config
        mode: "0750"
    files:
      - path: /opt/gpufleet/config/litellm.yaml
        content: "{{ lookup('ansible.builtin.template', 'litellm.yaml.j2') }}"
        mode: "0640"
    secret_files:
      - path: /opt/gpufleet/config/litellm.env
        content: "{{ lookup('ansible.builtin.template', 'litellm.env.j2') }}"
        mode: "0600"
"""

RETURN = r"""
written:
  description: The files written (or that would be, in check mode), in the order given.
  returned: always
  type: list
  elements: str
  sample: [/opt/gpufleet/config/litellm.yaml]
directories:
  description: The directories created or given their mode (or that would be).
  returned: always
  type: list
  elements: str
  sample: [/opt/gpufleet/config]
backups:
  description: The copies kept with O(backup), file path to backup path.
  returned: always
  type: dict
  sample:
    /opt/gpufleet/config/llm.yaml: /opt/gpufleet/config/llm.yaml.1234.2026-12-07@03:00:00~
"""

import os
import tempfile

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _config_files

_ENTRY = dict(path=dict(type="str", required=True), content=dict(type="str", required=True),
              mode=dict(type="str", required=True))


def _makedirs(path, mode):
    parent = os.path.dirname(path)
    if parent != path and not os.path.isdir(parent):
        _makedirs(parent, 0o755)
    if not os.path.isdir(path):
        os.mkdir(path, mode)
    os.chmod(path, mode)  # whatever the umask, or the mode it had


def _write(module, entry):
    directory, name = os.path.split(entry["path"])
    fd, temp = tempfile.mkstemp(prefix=".%s." % name, dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(entry["content"])
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, entry["mode"])
        module.atomic_move(temp, entry["path"])
        os.chmod(entry["path"], entry["mode"])  # atomic_move keeps the old file's mode
    finally:
        if os.path.exists(temp):
            os.unlink(temp)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            directories=dict(type="list", elements="dict", default=[],
                             options=dict(path=dict(type="str", required=True),
                                          mode=dict(type="str", required=True))),
            files=dict(type="list", elements="dict", default=[], options=_ENTRY),
            # no_log on each file's content; its path and mode may be shown
            secret_files=dict(type="list", elements="dict", default=[], no_log=False,
                              options=dict(_ENTRY, content=dict(type="str", required=True,
                                                                no_log=True))),
            backup=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )
    p = module.params
    try:
        dirs, files = _config_files.check(p["files"], p["secret_files"], p["directories"])
        dir_changes, file_changes = _config_files.compare(dirs, files)
    except (ValueError, _config_files.ConfigFilesError) as exc:
        module.fail_json(msg="config_files: %s" % exc)
    result = dict(changed=bool(dir_changes or file_changes),
                  written=[entry["path"] for entry in file_changes],
                  directories=[entry["path"] for entry in dir_changes], backups={})
    if module._diff:
        result["diff"] = _config_files.diff(dir_changes, file_changes)
    if module.check_mode:
        module.exit_json(**result)
    done, path = [], None
    try:
        for entry in dir_changes:
            path = entry["path"]
            _makedirs(path, entry["mode"])
        for entry in file_changes:
            path = entry["path"]
            if p["backup"] and entry["before"] is not None:
                result["backups"][path] = module.backup_local(path)
            _write(module, entry)
            done.append(path)
    except OSError as exc:
        # Each file is whole, old or new: those written before the failure stay written.
        module.fail_json(msg="config_files: cannot write %s: %s" % (path, exc),
                         changed=bool(done), written=done, backups=result["backups"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
