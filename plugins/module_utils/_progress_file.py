# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: append one line to a module's progress file.

Not a public API: the leading underscore says so. The action plugins that show progress
(plugin_utils/_progress.py) name a file in the host's async directory, which a new host does
not have yet; the modules (downloads, host_lock, service_verify) write through ``append``.
"""

from __future__ import annotations

import os


def append(path, line):
    """Append ``line`` and a newline to ``path``, creating its directory (0700) when missing."""
    directory = os.path.dirname(path)
    if directory and not os.path.isdir(directory):
        os.makedirs(directory, mode=0o700, exist_ok=True)
    with open(path, "a", encoding="utf-8") as out:
        out.write(line + "\n")
