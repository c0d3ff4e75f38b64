# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the small helpers every step shares, each in
one place (integer checks, the project's ``.env`` text, ``/proc/meminfo``).

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule. Bad input raises ValueError naming the field and its value.
"""

from __future__ import annotations

import re

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# NAME=value, with an optional ``export`` prefix (what shells and compose accept).
_DOTENV_KEY_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=")
_DOTENV_LINE_RE = re.compile(r"^\s*(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*?)\s*$")
_PLAIN_VALUE_RE = re.compile(r"^[A-Za-z0-9_./:,@%+=-]*$")


def is_int(value):
    """True for an int that is not a bool (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def scalar_text(value):
    """A scalar as a file writes it: booleans as true/false, the rest as str()."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def known_keys(value, known, where):
    """``value`` as a dict (None is empty) with keys among ``known`` only; ValueError naming
    ``where`` otherwise (``options has unknown key(s): a, b``)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise ValueError("%s must be a dict; got: %r" % (where, value))
    unknown = sorted(set(value) - set(known))
    if unknown:
        raise ValueError("%s has unknown key(s): %s" % (where, ", ".join(unknown)))
    return value


# ---- .env -------------------------------------------------------------------------------

def dotenv_get(text, key):
    """The value of ``key`` in an ``.env`` text (last one wins, quotes removed), or None."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("text must be the content of the .env file; got: %r" % (text,))
    value = None
    for line in text.splitlines():
        match = _DOTENV_LINE_RE.match(line)
        if match and match.group(1) == key:
            value = match.group(2)
            if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
                value = value[1:-1]
    return value


def dotenv_value(value):
    """A value as ``.env`` holds it: plain when safe, else double-quoted and escaped."""
    text = scalar_text(value)
    if _PLAIN_VALUE_RE.match(text):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$")


def dotenv_merge(existing, owned, header=None):
    """Merge the keys we own into an ``.env`` text; every other line stays as it was.

    An owned key is rewritten where it stands (later duplicates of it are dropped); owned keys
    not there yet are appended in ``owned``'s order. ``header`` (a comment the writer puts
    first) is dropped from the top of ``existing``, so it is not repeated. Returns the text
    without that header, ending in a newline.
    """
    if existing is None:
        existing = ""
    if not isinstance(existing, str):
        raise ValueError("existing must be the text of the .env file; got: %r" % (existing,))
    if not isinstance(owned, dict):
        raise ValueError("owned must be a dict of NAME: value; got: %r" % (owned,))
    for key, value in owned.items():
        if not isinstance(key, str) or not ENV_KEY_RE.match(key):
            raise ValueError("owned has a bad variable name; got: %r" % (key,))
        if value is None or isinstance(value, (dict, list)):
            raise ValueError("owned.%s must be a string or number; got: %r" % (key, value))
    head = (header or "").rstrip("\n").splitlines()
    lines = existing.splitlines()
    if head and lines[:len(head)] == head:
        lines = lines[len(head):]
    written = set()
    result = []
    for line in lines:
        match = _DOTENV_KEY_RE.match(line)
        key = match.group(1) if match else None
        if key in owned:
            if key not in written:
                result.append("%s=%s" % (key, dotenv_value(owned[key])))
                written.add(key)
            continue
        result.append(line)
    result.extend("%s=%s" % (key, dotenv_value(value))
                  for key, value in owned.items() if key not in written)
    return "\n".join(result) + "\n"


# ---- /proc/meminfo ----------------------------------------------------------------------

def parse_meminfo(text, path="meminfo", need=("MemTotal", "MemAvailable")):
    """MemTotal and MemAvailable of a /proc/meminfo text, in MiB; ValueError naming the field.

    A line of ``need`` that is missing is an error; one that is not needed is None when missing
    (MemAvailable is in every kernel since 3.14, MemTotal in all).
    """
    values = {}
    for line in text.splitlines():
        key, sep, rest = line.partition(":")
        if sep and key in ("MemTotal", "MemAvailable"):
            fields = rest.split()
            if not fields or not fields[0].isdigit() or fields[1:] not in ([], ["kB"]):
                raise ValueError("%s: %s must be a number of kB; got: %r"
                                 % (path, key, rest.strip()))
            values[key] = int(fields[0]) // 1024
    for key in need:
        if key not in values:
            raise ValueError("%s has no %s line" % (path, key))
    return dict(total_mib=values.get("MemTotal"), available_mib=values.get("MemAvailable"))
