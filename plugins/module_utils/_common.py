# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the small helpers every step shares, each in
one place (integer checks, the project's ``.env`` text, ``/proc/meminfo``).

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule. Bad input raises ValueError naming the field and its value.
"""

from __future__ import annotations

import re

ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\Z")
# The start of a statement NAME=value, with an optional ``export`` prefix (what shells and
# compose accept); spaces and tabs only, so that nothing runs on into the next line.
_DOTENV_KEY_RE = re.compile(r"[ \t\r\f\v]*(?:export[ \t]+)?([A-Za-z_][A-Za-z0-9_]*)[ \t]*=[ \t]*")
# A value written without quotes: nothing Compose would expand, cut or trim.
_PLAIN_VALUE_RE = re.compile(r"[A-Za-z0-9_./:,@%+=-]*")
# The escapes of a double-quoted value that Compose v2 turns into one character; any other
# backslash stays as it is.
_DOTENV_UNESCAPE = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", "f": "\f",
                    "v": "\v", "\\": "\\", '"': '"', "$": "$"}
_DOTENV_ESCAPE = {"\\": "\\\\", '"': '\\"', "$": "\\$", "\n": "\\n", "\r": "\\r", "\t": "\\t",
                  "\a": "\\a", "\b": "\\b", "\f": "\\f", "\v": "\\v"}
_DOTENV_SPACE = " \t\r\f\v"


def is_int(value):
    """True for an int that is not a bool (YAML's ``true`` is no count)."""
    return isinstance(value, int) and not isinstance(value, bool)


def ascii_digits(text):
    """True for a text of ASCII digits only: str.isdigit() and int() also take other scripts'
    digits ('\u0661', '\uff11'), which no count, port or index is written in."""
    return isinstance(text, str) and text.isascii() and text.isdigit()


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

def _dotenv_quoted(text, start, quote):
    """``(value, end)`` of a value quoted from ``start``; ``end`` is after the closing quote,
    or None when there is none (Compose fails on such a file; the reader does not)."""
    chars = []
    i = start + 1
    while i < len(text):
        char = text[i]
        if char == quote:
            return "".join(chars), i + 1
        if quote == '"' and char == "\\" and i + 1 < len(text):
            chars.append(_DOTENV_UNESCAPE.get(text[i + 1], char + text[i + 1]))
            i += 2
            continue
        chars.append(char)
        i += 1
    return None, None


def dotenv_statements(text):
    """``(key, value, start, end)`` of every NAME=value of an ``.env`` text, as Compose v2's
    parser reads it: a line is cut at ``\\n`` only, an unquoted value ends at the line's end or
    at `` #``, a single-quoted one is literal, a double-quoted one may span lines and knows the
    escapes of _DOTENV_UNESCAPE. ``start:end`` is the statement's text, its lines whole (the
    last newline included). A line that is no statement (comment, blank, garbage) is skipped."""
    statements = []
    pos = 0
    while pos < len(text):
        eol = text.find("\n", pos)
        line_end = len(text) if eol < 0 else eol
        match = _DOTENV_KEY_RE.match(text, pos, line_end)
        if match is None:
            pos = line_end + 1
            continue
        value_at = match.end()
        value = None
        if value_at < line_end and text[value_at] in "'\"":
            value, closed = _dotenv_quoted(text, value_at, text[value_at])
            if closed is not None:
                eol = text.find("\n", closed)
                line_end = len(text) if eol < 0 else eol
        if value is None:  # unquoted, or a quote that is never closed: up to the line's end
            value = text[value_at:line_end].split(" #", 1)[0]
            value = value.rstrip(_DOTENV_SPACE)
        statements.append((match.group(1), value, pos, min(line_end + 1, len(text))))
        pos = line_end + 1
    return statements


def dotenv_get(text, key):
    """The value of ``key`` in an ``.env`` text as Compose reads it (last one wins, quotes and
    escapes resolved, an unquoted value's `` #`` comment cut), or None."""
    if text is None:
        return None
    if not isinstance(text, str):
        raise ValueError("text must be the content of the .env file; got: %r" % (text,))
    value = None
    for name, found, _start, _end in dotenv_statements(text):
        if name == key:
            value = found
    return value


def dotenv_names(text):
    """The names an ``.env`` (or EnvironmentFile=) text sets, in order, each once: what a diff
    may show of a file of secrets."""
    names = []
    for name, _value, _start, _end in dotenv_statements(text or ""):
        if name not in names:
            names.append(name)
    return names


def dotenv_value(value):
    """A value as ``.env`` holds it: plain when safe, else double-quoted with every character
    Compose would expand, cut or read as a line's end escaped, so that Compose and dotenv_get
    read back exactly ``value`` and the statement stays on one line."""
    text = scalar_text(value)
    if _PLAIN_VALUE_RE.fullmatch(text):
        return text
    return '"%s"' % "".join(_DOTENV_ESCAPE.get(char, char) for char in text)


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
        if "\x00" in scalar_text(value):
            raise ValueError("owned.%s must not hold a NUL character; got: %r" % (key, value))
    head = (header or "").rstrip("\n").split("\n") if header else []
    if head and existing.split("\n")[:len(head)] == head:
        existing = "\n".join(existing.split("\n")[len(head):])
    written = set()
    result = []
    pos = 0
    for key, _value, start, end in dotenv_statements(existing):
        if key not in owned:
            continue
        result.append(existing[pos:start])
        if key not in written:
            result.append("%s=%s\n" % (key, dotenv_value(owned[key])))
            written.add(key)
        pos = end
    result.append(existing[pos:])
    text = "".join(result)
    if text and not text.endswith("\n"):
        text += "\n"
    text += "".join("%s=%s\n" % (key, dotenv_value(value))
                    for key, value in owned.items() if key not in written)
    return text or "\n"


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


def recommend_profile(gpu_count, remote=False):
    """remote when inference runs elsewhere, else cpu / single-gpu / dual-gpu / multi-gpu."""
    if not is_int(gpu_count) or gpu_count < 0:
        raise ValueError("gpu_count must be an integer >= 0; got: %r" % (gpu_count,))
    if not isinstance(remote, bool):
        raise ValueError("remote must be a boolean; got: %r" % (remote,))
    if remote:
        return "remote"
    return ("cpu", "single-gpu", "dual-gpu", "multi-gpu")[min(gpu_count, 3)]


def os_error_text(exc):
    """An error as a failure message says it: ``[Errno 28] No space left on device`` for an
    OSError with its reason, else the exception's text."""
    if isinstance(exc, OSError) and exc.strerror:
        return "[Errno %s] %s" % (exc.errno, exc.strerror)
    return str(exc)
