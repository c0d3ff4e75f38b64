# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: what the config_files module writes.

Not a public API: the leading underscore says so. ``check`` turns the module's options into
directories and files (bad input named, before anything is read); ``compare`` says which of
them differ from the disk, and ``diff`` what a diff shows of them (never a secret file's
content). The module does the writing.
"""

from __future__ import annotations

import os
import re
import stat

from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    os_error_text as _why,
)

_MODE_RE = re.compile(r"^0?[0-7]{3}\Z")


class ConfigFilesError(Exception):
    """A file or directory could not be read."""


def _path(value, at):
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value \
            or "\n" in value or value.endswith("/"):
        raise ValueError("%s.path must be an absolute path; got: %r" % (at, value))
    return os.path.normpath(value)


def _mode(value, at):
    if isinstance(value, bool) or not isinstance(value, str) or not _MODE_RE.match(value):
        raise ValueError("%s.mode must be an octal mode in quotes such as '0640'; got: %r"
                         % (at, value))
    return int(value, 8)


def check(files, secret_files, directories):
    """(directories, files): ``[{path, mode}]`` and ``[{path, mode, content, secret}]``
    (``content`` as bytes), in the order given, secret files last. Raises ValueError."""
    dirs = []
    for i, entry in enumerate(directories or []):
        at = "directories[%d]" % i
        if not isinstance(entry, dict):
            raise ValueError("%s must be a dict with path and mode; got: %r" % (at, entry))
        dirs.append({"path": _path(entry.get("path"), at), "mode": _mode(entry.get("mode"), at)})
    out = []
    for option, entries, secret in (("files", files, False), ("secret_files", secret_files, True)):
        for i, entry in enumerate(entries or []):
            at = "%s[%d]" % (option, i)
            if not isinstance(entry, dict):
                raise ValueError("%s must be a dict with path, content and mode; got: %r"
                                 % (at, "(secret)" if secret else entry))
            content = entry.get("content")
            if not isinstance(content, str):
                raise ValueError("%s.content must be text; got: %s"
                                 % (at, "(secret)" if secret else repr(content)))
            out.append({"path": _path(entry.get("path"), at), "mode": _mode(entry.get("mode"), at),
                        "content": content.encode("utf-8", "surrogateescape"), "secret": secret})
    seen = set()
    for entry in out:
        if entry["path"] in seen:
            raise ValueError("%s is given twice" % entry["path"])
        seen.add(entry["path"])
    return dirs, out


def _stat(path):
    try:
        return os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise ConfigFilesError("cannot read %s: %s" % (path, _why(exc))) from None


def compare(dirs, files):
    """(directories to create or chmod, files to write): each with ``before_mode`` (None when
    it does not exist), each file with ``before`` (bytes, or None when there is none)."""
    dir_changes = []
    for entry in dirs:
        info = _stat(entry["path"])
        if info is not None and not stat.S_ISDIR(info.st_mode):
            raise ConfigFilesError("%s is not a directory" % entry["path"])
        before_mode = None if info is None else stat.S_IMODE(info.st_mode)
        if before_mode != entry["mode"]:
            dir_changes.append(dict(entry, before_mode=before_mode))
    file_changes = []
    for entry in files:
        info = _stat(entry["path"])
        before = None
        if info is not None:
            if not stat.S_ISREG(info.st_mode):
                raise ConfigFilesError("%s is not a regular file" % entry["path"])
            try:
                with open(entry["path"], "rb") as handle:
                    before = handle.read()
            except OSError as exc:
                raise ConfigFilesError("cannot read %s: %s" % (entry["path"], _why(exc))) from None
        before_mode = None if info is None else stat.S_IMODE(info.st_mode)
        if before != entry["content"] or before_mode != entry["mode"]:
            file_changes.append(dict(entry, before=before, before_mode=before_mode))
    return dir_changes, file_changes


def diff(dir_changes, file_changes):
    """What ``--diff`` shows: per directory and file a diff; a secret file's says that it
    changed and its mode, never its content."""
    out = []
    for entry in dir_changes:
        if entry["before_mode"] is None:
            out.append({"prepared": "%s: directory created, mode %04o\n"
                        % (entry["path"], entry["mode"])})
        else:
            out.append({"prepared": "%s: directory mode %04o -> %04o\n"
                        % (entry["path"], entry["before_mode"], entry["mode"])})
    for entry in file_changes:
        if entry["secret"]:
            said = "%s: %s (it may hold keys: its content is not shown)\n" % (
                entry["path"], "created" if entry["before"] is None else "rewritten")
            out.append({"prepared": said})
            continue
        out.append({
            "before_header": entry["path"], "after_header": entry["path"],
            "before": "" if entry["before"] is None
            else entry["before"].decode("utf-8", "replace"),
            "after": entry["content"].decode("utf-8", "replace")})
        if entry["before_mode"] not in (None, entry["mode"]):
            out.append({"prepared": "%s: mode %04o -> %04o\n" % (
                entry["path"], entry["before_mode"], entry["mode"])})
    return out
