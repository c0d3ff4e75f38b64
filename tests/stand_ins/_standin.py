# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared helpers of the test stand-ins in bin/ (see README.md): not a vendor tool.

Every stand-in answers only from real captured outputs (tests/fixtures) named by
environment variables, and can be told to misbehave the ways real tools do.
"""

from __future__ import annotations

import os
import re
import sys
import time

NO_FIXTURE_RC = 97


def log_call(tool, args):
    path = os.environ.get("GPUFLEET_STANDIN_LOG")
    if path:
        with open(path, "a") as handle:
            handle.write(" ".join([tool, *args]) + "\n")


def _applies(args):
    pattern = os.environ.get("GPUFLEET_STANDIN_MATCH")
    return not pattern or re.search(pattern, " ".join(args)) is not None


def misbehave(args):
    """Hang, fail or print garbage when the environment asks for it (and MATCH fits)."""
    if not _applies(args):
        return
    hang = os.environ.get("GPUFLEET_STANDIN_HANG")
    if hang:
        time.sleep(float(hang))
    fail = os.environ.get("GPUFLEET_STANDIN_FAIL")
    if fail:
        rc, message = fail.split(":", 1) if ":" in fail else (fail, "")
        sys.stdout.write(message + "\n")
        sys.exit(int(rc))
    garbage = os.environ.get("GPUFLEET_STANDIN_GARBAGE")
    if garbage is not None:
        sys.stdout.write(garbage + "\n")
        sys.exit(0)
    preamble = os.environ.get("GPUFLEET_STANDIN_PREAMBLE")
    if preamble:
        sys.stdout.write(preamble + "\n")


def no_fixture(tool, args, variable):
    command = " ".join([tool, *args])
    sys.stderr.write("%s stand-in: no fixture answers `%s` (set %s)\n" % (tool, command, variable))
    sys.exit(NO_FIXTURE_RC)


def read(path):
    with open(path, encoding="utf-8") as handle:
        return handle.read()


def capture_sections(text):
    """Sections of an nvidia_gpu_exporter capture: [(phase, command, body)].

    A section is a banner (``# <phase> :: <title>``, ``# $ <command>``) between lines
    of ``#`` characters, then the command's output up to the next such line.
    """
    lines = text.split("\n")
    sections = []
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("# $ "):
            command = " ".join(line[4:].split())
            title = lines[index - 1] if index else ""
            phase = title[2:].split(" :: ", 1)[0].strip() if " :: " in title else ""
            start = index + 1
            if start < len(lines) and lines[start].startswith("#####"):
                start += 1
            end = start
            while end < len(lines) and not lines[end].startswith("#####"):
                end += 1
            body = "\n".join(lines[start:end]).rstrip("\n")
            sections.append((phase, command, body))
            index = end
        else:
            index += 1
    return sections


def find_section(sections, phase, predicate):
    """The body of the first section whose command fits, preferring the phase asked."""
    fitting = [section for section in sections if predicate(section[1])]
    for section in fitting:
        if section[0] == phase:
            return section[2]
    return fitting[0][2] if fitting else None


def select_columns(body, fields, options, unsupported, tool):
    """Answer a --query-*=<fields> --format=csv[,noheader][,nounits] from a full CSV."""
    rows = [line for line in body.split("\n") if line.strip()]
    header = [cell.strip() for cell in rows[0].split(", ")]
    bare = [re.sub(r" \[[^\]]*\]$", "", name) for name in header]
    for field in fields:
        if field in unsupported or field not in bare:
            sys.stdout.write('Field "%s" is not a valid field to query.\n\n' % field)
            sys.exit(2)
    picks = [bare.index(field) for field in fields]
    out = []
    if "noheader" not in options:
        names = [header[i] for i in picks]
        if "nounits" in options:
            names = [bare[i] for i in picks]
        out.append(", ".join(names))
    for row in rows[1:]:
        cells = [cell.strip() for cell in row.split(", ")]
        if len(cells) != len(header):
            sys.stderr.write("%s stand-in: capture row does not fit its header\n" % tool)
            sys.exit(NO_FIXTURE_RC)
        values = [cells[i] for i in picks]
        if "nounits" in options:
            values = [
                value
                if value.startswith("[")
                else re.sub(r" (MiB|W|%|MHz|us|C)$", "", value)
                for value in values
            ]
        out.append(", ".join(values))
    return "\n".join(out)
