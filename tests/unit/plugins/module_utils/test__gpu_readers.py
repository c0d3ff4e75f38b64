# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where the readers take the system memory (a unified-memory GPU's size) from."""

from __future__ import annotations

from ansible_collections.gpufleet.inference.plugins.module_utils import _gpu_readers


def test_system_memory_from_the_root_or_from_the_file_given(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc" / "meminfo").write_text("MemTotal:       24683520 kB\n")
    lab = tmp_path / "lab-meminfo"
    lab.write_text("MemTotal:       127600640 kB\nMemAvailable:   100000000 kB\n")
    assert _gpu_readers.Readers(None, 5, str(tmp_path)).memory_mib == 24105
    assert _gpu_readers.Readers(None, 5, str(tmp_path), meminfo_path=str(lab)).memory_mib \
        == 124610
