# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: the project's file set, written as one.

Not a public API: the leading underscore says so. No AnsibleModule: the module
plugins/modules/project_files.py wraps :func:`present` and :func:`restored`; the YAML dumper
and loader and the atomic rename are handed in, so everything here is the standard library.
Bad input raises ValueError naming the field and its value; a file that cannot be read or
written raises FilesetError naming the file.

Vocabulary
  set        the files one runtime owns. compose: compose.yml, compose.gpu.yml,
             compose.podman-gpu.yml, .env and gpu-assignments.yml in project_dir. systemd:
             ollama@.service and vllm@.service in units_dir, and every <instance>.env in env_dir
             (the plan's instances, and those it no longer has, which are removed).
             podman: gpufleet.network and gpufleet-<service>.container (Quadlet units, one
             per active service) in units_dir, and <service>.env (Podman's environment file
             of each container) in env_dir; containers and environment files the plan no
             longer has are removed.
             All: secrets/<service>.env (in project_dir, in env_dir) for each service whose
             plan lists a secret environment, mode 0600 in a 0700 folder, from ``secret_env``.
  key        a file's name in the snapshot: compose.yml, .env, units/vllm@.service, env/x.env.
  snapshot   snapshot_dir: a copy of every file of the set that existed before the last write,
             and manifest.json with each file's key, mode and sha256, or ``exists: false``.
  present    render the set from the plan, compare it with the disk, keep the snapshot, write
             what differs.
  restored   put the snapshot back byte for byte; what it records as absent is removed.

Choices
  - Every file goes to a temporary file in its own directory and is renamed over the old one.
    All temporary files of a call are written before the first rename, so a full disk fails
    before any file of the set changes. A rename or removal that fails puts back the files
    this call already replaced (their old bytes, which the snapshot holds too, are in memory)
    and removes the temporary files, so every file is old or new, never half written.
    Rejected: the template module's ``backup`` (``~`` files a failed run leaves behind).
  - The snapshot is written by every ``present`` outside check mode, before the first file of
    the set, and only the copies whose bytes differ: it always equals the set as that call
    found it, so ``restored`` undoes exactly that call's write (a first apply: removes what it
    wrote). manifest.json is written last and holds each copy's sha256, so a snapshot cut short
    is reported, never restored.
  - gpu-assignments.yml keeps its generated_at while the assignments are the same, so a run
    that changes nothing writes nothing.
  - A secret file's text never leaves this module: its diff shows the names it sets, each
    ``NAME=(hidden)``, and a line when only values changed. The plan carries the names only.
  - Compose files are the YAML of ``_render.compose_document`` as the compose role's templates
    wrote it (``to_nice_yaml(indent=2, sort_keys=false, width=200)``), under one header line.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import stat
import tempfile

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _common,
    _plan,
    _quadlet,
    _render,
)
from ansible_collections.gpufleet.inference.plugins.module_utils._common import (
    os_error_text as _why,
)

HEADER = "# Managed by gpufleet.inference (project_files): edit the inventory, not this file."
RUNTIMES = ("compose", "systemd", "podman")
COMPOSE_RUNTIMES = ("docker", "podman")
COMPOSE_FILES = (("compose.yml", "base"), ("compose.gpu.yml", "gpu"),
                 ("compose.podman-gpu.yml", "podman"))
COMPOSE_OVERLAY = {"docker": "compose.gpu.yml", "podman": "compose.podman-gpu.yml"}
DOTENV = ".env"
ASSIGNMENTS = "gpu-assignments.yml"
COMPOSE_SET = (*(name for name, _kind in COMPOSE_FILES), DOTENV, ASSIGNMENTS)
# .env keys written from the plan and the options; ``env`` must not name them.
OWNED_ENV_KEYS = ("COMPOSE_PROJECT_NAME", "COMPOSE_FILE", "COMPOSE_PROFILES", "DUAL_GPU_MODE",
                  "INFERENCE_MODE")
ENGINES = _render.SYSTEMD_UNIT_ENGINES
SNAPSHOT_NAME = ".gpufleet-previous"
MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
# What to_nice_yaml(indent=2, sort_keys=false, width=200) hands to yaml.dump.
YAML_DUMP_OPTIONS = {"indent": 2, "sort_keys": False, "width": 200, "allow_unicode": True,
                     "default_flow_style": False}
FILE_MODE = 0o644
SECRET_MODE = 0o640  # .env and the instance environment files
DIR_MODE = 0o755
SNAPSHOT_DIR_MODE = 0o700
SNAPSHOT_FILE_MODE = 0o600
SECRETS_DIR = _render.SECRETS_DIR
SECRET_MODE_FILE = 0o600  # secrets/<service>.env
SECRET_DIR_MODE = 0o700

COMPOSE_DEFAULTS = {"project_dir": "/opt/gpufleet", "project_name": "gpufleet",
                    "compose_runtime": "docker", "env": {}, "snapshot_dir": None,
                    "secret_env": {}}
SYSTEMD_DEFAULTS = {"units_dir": "/etc/systemd/system", "env_dir": "/etc/gpufleet/instances",
                    "models_dir": "/srv/gpufleet/models/ollama",
                    "bind_address": _render.DEFAULT_BIND_ADDRESS, "user": "gpufleet",
                    "group": "gpufleet", "ollama_bin": "/usr/local/bin/ollama",
                    "vllm_bin": "/usr/local/bin/vllm", "state_dir_name": "gpufleet",
                    "snapshot_dir": None, "secret_env": {}}

PODMAN_DEFAULTS = {"units_dir": "/etc/containers/systemd", "env_dir": _quadlet.DEFAULT_ENV_DIR,
                   "bind_address": _render.DEFAULT_BIND_ADDRESS, "snapshot_dir": None,
                   "secret_env": {}}
_CONTAINER_FILE_RE = re.compile(r"^%s[a-z0-9][a-z0-9_-]*\.container\Z" % _quadlet.PREFIX)
_CONTAINER_COMMENT = "# %s: written from services_plan (placement and catalog); edit the inventory."

_ASSIGNMENTS_COMMENT = ("# Which GPU each service runs on: for reading, generated "
                        "from the placement.")
_INSTANCE_COMMENT = "# %s: written from services_plan (placement and catalog); edit the inventory."
# The header the roles' templates wrote before this module ({{ ansible_managed | comment }}).
_ANSIBLE_MANAGED = "#\n# Ansible managed\n#\n"
_PROJECT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}\Z")
_UNIT_LINE_RE = re.compile(r"^# ((?:ollama|vllm)@[^\s:/]+\.service): ", re.MULTILINE)
_TEMP_SUFFIX = ".gpufleet-tmp"
_WILDCARDS = ("0.0.0.0", "::")


class FilesetError(Exception):
    """A file of the set or of the snapshot could not be read or written."""


# ---- options ------------------------------------------------------------------------------

def _abs_path(value, field):
    if not isinstance(value, str) or not value.startswith("/") or "\x00" in value \
            or "\n" in value:
        raise ValueError("%s must be an absolute path; got: %r" % (field, value))
    return os.path.normpath(value)


def check_options(runtime, options=None):
    """The options of ``runtime`` with their defaults, checked; ValueError naming the option.

    Options of the other runtime are ignored, so a caller may pass every option it has.
    """
    if runtime not in RUNTIMES:
        raise ValueError("runtime must be one of %s; got: %r" % (", ".join(RUNTIMES), runtime))
    options = options or {}
    if not isinstance(options, dict):
        raise ValueError("options must be a dict; got: %r" % (options,))
    defaults = {"compose": COMPOSE_DEFAULTS, "systemd": SYSTEMD_DEFAULTS,
                "podman": PODMAN_DEFAULTS}[runtime]
    opts = {key: default if options.get(key) is None else options[key]
            for key, default in defaults.items()}
    if runtime == "compose":
        opts["project_dir"] = _abs_path(opts["project_dir"], "project_dir")
        name = opts["project_name"]
        if not isinstance(name, str) or not _PROJECT_RE.match(name):
            raise ValueError("project_name must be a compose project name (lower case letters, "
                             "digits, '_' and '-'); got: %r" % (name,))
        if opts["compose_runtime"] not in COMPOSE_RUNTIMES:
            raise ValueError("compose_runtime must be one of %s; got: %r"
                             % (", ".join(COMPOSE_RUNTIMES), opts["compose_runtime"]))
        opts["env"] = _check_env(opts["env"])
        default_snapshot = os.path.join(opts["project_dir"], SNAPSHOT_NAME)
    else:
        for key in ("units_dir", "env_dir", "models_dir", "ollama_bin", "vllm_bin"):
            if key in opts:
                opts[key] = _abs_path(opts[key], key)
        opts["bind_address"] = _plan.check_bind_address(opts["bind_address"], "bind_address")
        default_snapshot = os.path.join(opts["env_dir"], SNAPSHOT_NAME)
    opts["secret_env"] = _check_secret_env(opts["secret_env"])
    if opts["snapshot_dir"] is None:
        opts["snapshot_dir"] = default_snapshot
    opts["snapshot_dir"] = _abs_path(opts["snapshot_dir"], "snapshot_dir")
    return opts


def _check_env(env):
    if not isinstance(env, dict):
        raise ValueError("env must be a dict of NAME: value; got: %r" % (env,))
    owned = [key for key in OWNED_ENV_KEYS if key in env]
    if owned:
        raise ValueError("env must not set %s: project_files writes them from the plan and its "
                         "options; got: %s" % (", ".join(owned), ", ".join(map(str, env))))
    for key, value in env.items():
        if not isinstance(key, str) or not _common.ENV_KEY_RE.match(key):
            raise ValueError("env has a bad variable name; got: %r" % (key,))
        if value is None or isinstance(value, (dict, list)):
            raise ValueError("env.%s must be a string, number or boolean; got: %r" % (key, value))
    return dict(env)


def _check_secret_env(value):
    """``{service: {NAME: value}}``; a message names the service and the name, never a value."""
    if not isinstance(value, dict):
        raise ValueError("secret_env must be a dict of service: {NAME: value}; got: a %s"
                         % type(value).__name__)
    for service, env in value.items():
        if not isinstance(env, dict):
            raise ValueError("secret_env.%s must be a dict of NAME: value; got: a %s"
                             % (service, type(env).__name__))
        for key, item in env.items():
            if not isinstance(key, str) or not _common.ENV_KEY_RE.match(key):
                raise ValueError("secret_env.%s has a bad variable name; got: %r" % (service, key))
            if item is None or isinstance(item, (dict, list)) \
                    or "\x00" in _common.scalar_text(item):
                raise ValueError("secret_env.%s.%s must be a string, number or boolean without "
                                 "a NUL character (value not shown)" % (service, key))
    return value


def _check_plan(plan):
    if not isinstance(plan, dict) or not isinstance(plan.get("services"), list) \
            or not isinstance(plan.get("compose_profiles"), list):
        got = sorted(map(str, plan)) if isinstance(plan, dict) else plan
        raise ValueError("plan must be the services_plan fact set by the "
                         "gpufleet.inference.services role (services, compose_profiles, ...); "
                         "got: %r" % (got,))
    return plan


def _rendering(call, *args, **kwargs):
    """A _render call on the plan; a plan with missing or bad keys fails as a ValueError."""
    try:
        return call(*args, **kwargs)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:
        raise ValueError("plan is not a services_plan fact of gpufleet.inference.services: "
                         "%s %s" % (type(exc).__name__, exc)) from None


# ---- the disk -----------------------------------------------------------------------------

def _read(path):
    """``(bytes, mode)`` of the regular file at ``path``, or None when there is none."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise FilesetError("cannot read %s: %s" % (path, _why(exc))) from None
    if not stat.S_ISREG(info.st_mode):
        raise FilesetError("%s is not a regular file" % path)
    try:
        with open(path, "rb") as handle:
            return handle.read(), stat.S_IMODE(info.st_mode)
    except OSError as exc:
        raise FilesetError("cannot read %s: %s" % (path, _why(exc))) from None


def _text(data):
    """File bytes as text, foreign bytes kept (they are written back as they were)."""
    return data.decode("utf-8", "surrogateescape")


def _shown(data):
    """File bytes as a diff shows them."""
    return "" if data is None else data.decode("utf-8", "replace")


def _sha256(data):
    return hashlib.sha256(data).hexdigest()


def _makedirs(path, mode):
    """Create ``path`` (mode ``mode``) and its missing parents (0755)."""
    if os.path.isdir(path):
        return
    parent = os.path.dirname(path)
    if parent and parent != path:
        _makedirs(parent, DIR_MODE)
    try:
        os.mkdir(path, mode)
        os.chmod(path, mode)  # whatever the umask
    except FileExistsError:
        if not os.path.isdir(path):
            raise FilesetError("cannot create directory %s: a file is in the way" % path) from None
    except OSError as exc:
        raise FilesetError("cannot create directory %s: %s" % (path, _why(exc))) from None


def _write_bytes(fd, data, path):
    """Write all of ``data`` to ``fd`` (the temporary file of ``path``) and flush it to disk."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)


def _write_temp(path, data, mode):
    """A temporary file beside ``path`` holding ``data``; removed again when writing fails."""
    directory, name = os.path.split(path)
    fd, temp = tempfile.mkstemp(prefix=".%s." % name, suffix=_TEMP_SUFFIX, dir=directory)
    try:
        try:
            _write_bytes(fd, data, path)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
    except BaseException:
        _unlink_quietly(temp)
        raise
    return temp


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def _remove_stale_temps(directories):
    """Temporary files a killed run left behind (ours by their name)."""
    for directory in sorted(set(directories)):
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            if name.startswith(".") and name.endswith(_TEMP_SUFFIX):
                _unlink_quietly(os.path.join(directory, name))


def _replace(path, data, mode, mover):
    temp = _write_temp(path, data, mode)
    try:
        mover(temp, path)
        os.chmod(path, mode)
    finally:
        _unlink_quietly(temp)


# ---- comparing and writing ----------------------------------------------------------------

def _entry(key, path, content, mode):
    """A file of the set as it should be: ``content`` bytes, or None for absent."""
    return {"key": key, "path": path, "content": content, "mode": mode}


def _compare(entries):
    """Each entry with what is on disk (``before``, ``before_mode``) and its ``state``.

    An entry that should be absent and is absent is left out.
    """
    changes = []
    for entry in entries:
        found = _read(entry["path"])
        before, before_mode = found if found is not None else (None, None)
        if entry["content"] is None:
            if found is None:
                continue
            state = "removed"
        elif found is None:
            state = "created"
        elif before != entry["content"] or before_mode != entry["mode"]:
            state = "changed"
        else:
            state = "unchanged"
        changes.append(dict(entry, before=before, before_mode=before_mode, state=state))
    return changes


def _is_secret(key):
    return key.startswith(SECRETS_DIR + "/")


def _masked(data):
    """What a diff shows of a secret file: the names it sets, never a value."""
    if data is None:
        return ""
    return "".join("%s=(hidden)\n" % name for name in _common.dotenv_names(_text(data)))


def _masked_dotenv(data):
    """What a diff shows of the project ``.env``: comments and the keys this collection owns as
    they are, every other key (the user's own, such as HF_TOKEN) as ``NAME=(hidden)``."""
    if data is None:
        return ""
    text = _text(data)
    parts, pos = [], 0
    for name, _value, start, end in _common.dotenv_statements(text):
        parts.append(text[pos:start])
        parts.append(text[start:end] if name in OWNED_ENV_KEYS else "%s=(hidden)\n" % name)
        pos = end
    parts.append(text[pos:])
    return "".join(parts)


def _masked_pair(change, mask, note):
    """Before and after of ``change`` through ``mask``, with ``note`` after when only what the
    mask hides changed."""
    before, after = mask(change["before"]), mask(change["content"])
    if change["before"] is not None and change["content"] is not None \
            and change["before"] != change["content"] and before == after:
        after += note
    return before, after


def _diff(changes):
    result = []
    for change in changes:
        if change["state"] == "unchanged":
            continue
        if _is_secret(change["key"]):
            before, after = _masked_pair(change, _masked, "# values changed\n")
            path = change["path"] + " (values hidden)"
            result.append({"before_header": path, "after_header": path, "before": before,
                           "after": after})
            continue
        before_header = after_header = change["path"]
        if change["before"] is None:
            before_header += " (absent)"
        if change["content"] is None:
            after_header += " (absent)"
        elif change["before"] is not None and change["before_mode"] != change["mode"]:
            before_header += " (mode %04o)" % change["before_mode"]
            after_header += " (mode %04o)" % change["mode"]
        if change["key"] == DOTENV:
            # The user's own keys (HF_TOKEN) live here too: only ours are shown with values.
            before, after = _masked_pair(change, _masked_dotenv, "# other values changed\n")
        else:
            before, after = _shown(change["before"]), _shown(change["content"])
        result.append({"before_header": before_header, "after_header": after_header,
                       "before": before, "after": after})
    return result


def _put_back(done, mover):
    """Put the files of ``done`` back as they were; returns what could not be put back."""
    problems = []
    for change in reversed(done):
        path = change["path"]
        try:
            found = _read(path)
            if change["before"] is None:
                if found is not None:
                    os.unlink(path)
            elif found is None or found[0] != change["before"]:
                _replace(path, change["before"], change["before_mode"], mover)
            elif found[1] != change["before_mode"]:
                os.chmod(path, change["before_mode"])
        except (OSError, FilesetError) as exc:
            problems.append("%s: %s" % (path, _why(exc)))
    return problems


def _commit(changes, mover):
    """Bring the disk to the changes: every file old or new, never half written."""
    todo = [c for c in changes if c["state"] != "unchanged"]
    _remove_stale_temps(os.path.dirname(c["path"]) for c in todo)
    temps = {}
    try:
        for change in todo:
            if change["content"] is not None and change["content"] != change["before"]:
                temps[change["path"]] = _write_temp(change["path"], change["content"],
                                                    change["mode"])
    except OSError as exc:
        for temp in temps.values():
            _unlink_quietly(temp)
        raise FilesetError("cannot write %s: %s; no file was changed"
                           % (change["path"], _why(exc))) from None
    done = []
    try:
        for change in todo:
            path = change["path"]
            done.append(change)
            if path in temps:
                mover(temps[path], path)
                del temps[path]
                os.chmod(path, change["mode"])
            elif change["content"] is None:
                os.unlink(path)
            else:
                os.chmod(path, change["mode"])
    except (OSError, FilesetError) as exc:
        for temp in temps.values():
            _unlink_quietly(temp)
        problems = _put_back(done, mover)
        message = "cannot write %s: %s" % (done[-1]["path"], _why(exc))
        if problems:
            raise FilesetError("%s; putting back the files already written failed too: %s"
                               % (message, "; ".join(problems))) from None
        raise FilesetError("%s; every file is as it was before" % message) from None


# ---- the snapshot -------------------------------------------------------------------------

def _snapshot_records(changes):
    return [{"key": c["key"], "path": c["path"], "exists": c["before"] is not None,
             "mode": None if c["before"] is None else "%04o" % c["before_mode"],
             "sha256": None if c["before"] is None else _sha256(c["before"])}
            for c in changes]


def _save_snapshot(snapshot_dir, runtime, changes, mover):
    """Keep the set as ``changes`` found it (their ``before``) in ``snapshot_dir``."""
    _makedirs(snapshot_dir, SNAPSHOT_DIR_MODE)
    where = snapshot_dir
    try:
        os.chmod(snapshot_dir, SNAPSHOT_DIR_MODE)
        keys = set()
        for change in changes:
            where = os.path.join(snapshot_dir, change["key"])
            keys.add(change["key"])
            if change["before"] is None:
                if os.path.lexists(where):
                    os.unlink(where)
                continue
            _makedirs(os.path.dirname(where), SNAPSHOT_DIR_MODE)
            found = _read(where)
            if found is None or found[0] != change["before"]:
                _replace(where, change["before"], SNAPSHOT_FILE_MODE, mover)
        for top, _dirs, names in os.walk(snapshot_dir):
            for name in names:
                where = os.path.join(top, name)
                if os.path.relpath(where, snapshot_dir) not in keys | {MANIFEST}:
                    os.unlink(where)  # an older layout's file
        manifest = (json.dumps({"format": MANIFEST_FORMAT, "runtime": runtime,
                                "files": _snapshot_records(changes)}, indent=2, sort_keys=True)
                    + "\n").encode("utf-8")
        where = os.path.join(snapshot_dir, MANIFEST)
        found = _read(where)
        if found is None or found[0] != manifest:
            _replace(where, manifest, SNAPSHOT_FILE_MODE, mover)
    except OSError as exc:
        raise FilesetError("cannot keep the last good files: cannot write %s: %s; no file of the "
                           "set was changed" % (where, _why(exc))) from None


def _key_path(runtime, opts, key):
    """Where a snapshot key lives in the set; ValueError for a key the set cannot have."""
    if isinstance(key, str):
        folder, _sep, name = key.partition("/")
        if folder == SECRETS_DIR and _is_env_name(name):
            root = opts["project_dir"] if runtime == "compose" else opts["env_dir"]
            return os.path.join(root, SECRETS_DIR, name)
        if runtime == "compose" and key in COMPOSE_SET:
            return os.path.join(opts["project_dir"], key)
        if runtime in ("systemd", "podman"):
            folder, _sep, name = key.partition("/")
            units = (["%s@.service" % e for e in ENGINES] if runtime == "systemd"
                     else [_quadlet.NETWORK_FILE])
            if folder == "units" and (name in units or (runtime == "podman"
                                      and _CONTAINER_FILE_RE.match(name))):
                return os.path.join(opts["units_dir"], name)
            if folder == "env" and _is_env_name(name):
                return os.path.join(opts["env_dir"], name)
    raise ValueError("the snapshot's manifest names a file the %s set does not have; got: %r"
                     % (runtime, key))


def _is_env_name(name):
    return name.endswith(".env") and len(name) > 4 and "/" not in name \
        and not name.startswith(".")


def _load_snapshot(opts, runtime):
    """The snapshot's entries, each copy checked against its sha256."""
    snapshot_dir = opts["snapshot_dir"]
    found = _read(os.path.join(snapshot_dir, MANIFEST))
    if found is None:
        raise FilesetError("there is no snapshot of the last good files in %s (project_files "
                           "state=present keeps one before it writes): nothing to restore"
                           % snapshot_dir)
    try:
        manifest = json.loads(found[0].decode("utf-8"))
        if manifest.get("format") != MANIFEST_FORMAT or not isinstance(manifest["files"], list):
            raise ValueError(manifest.get("format"))
    except (ValueError, KeyError, AttributeError, TypeError, UnicodeDecodeError):
        raise FilesetError("%s is not a snapshot manifest of project_files; nothing restored"
                           % os.path.join(snapshot_dir, MANIFEST)) from None
    if manifest.get("runtime") != runtime:
        raise ValueError("the snapshot in %s is of runtime %s; got: runtime=%r"
                         % (snapshot_dir, manifest.get("runtime"), runtime))
    entries = []
    for record in manifest["files"]:
        key = record.get("key") if isinstance(record, dict) else None
        path = _key_path(runtime, opts, key)
        if not record.get("exists"):
            entries.append(_entry(key, path, None, None))
            continue
        copy = _read(os.path.join(snapshot_dir, key))
        if copy is None or _sha256(copy[0]) != record.get("sha256"):
            raise FilesetError("the snapshot in %s is damaged: %s does not match its manifest; "
                               "nothing restored" % (snapshot_dir, key))
        try:
            mode = int(record["mode"], 8) & 0o7777
        except (KeyError, TypeError, ValueError):
            raise FilesetError("the snapshot in %s is damaged: %s has no mode; nothing "
                               "restored" % (snapshot_dir, key)) from None
        entries.append(_entry(key, path, copy[0], mode))
    return entries


# ---- the secret files ---------------------------------------------------------------------

def _planned_secrets(plan):
    """``{service: [NAME, ...]}`` of the plan's services that have a secret environment."""
    planned = {}
    for service in plan["services"]:
        names = service.get("secret_environment") if isinstance(service, dict) else None
        if names:
            planned[service["name"]] = list(names)
    return planned


def _secret_files(root):
    """Names of the <service>.env files in root/secrets now."""
    return _env_files(os.path.join(root, SECRETS_DIR))


def _secret_entries(plan, opts, root, services, render_value):
    """root/secrets/<service>.env (mode 0600) of each of ``services`` whose plan lists a
    secret environment, from ``secret_env``, whose names must be the plan's; the files of
    services that have none any more are removed."""
    planned = _planned_secrets(plan)
    given = opts["secret_env"]
    for service in given:
        if service not in planned:
            raise ValueError("secret_env has a service whose plan lists no secret environment; "
                             "got: %r" % (service,))
    entries = []
    written = set()
    for service, names in planned.items():
        env = given.get(service) or {}
        missing = [n for n in names if n not in env]
        if missing:
            raise ValueError("secret_env.%s has no value for %s (the plan lists %s); got names: "
                             "%s" % (service, ", ".join(missing), ", ".join(names),
                                     ", ".join(env) or "none"))
        if set(env) - set(names):
            raise ValueError("secret_env.%s has names the plan does not list (%s); got names: %s"
                             % (service, ", ".join(names), ", ".join(env)))
        if service not in services:
            continue
        name = "%s.env" % service
        written.add(name)
        lines = ["%s=%s\n" % (key, render_value(env[key], "secret_env.%s.%s" % (service, key)))
                 for key in names]
        text = "%s\n%s" % (HEADER, "".join(lines))
        entries.append(_entry("%s/%s" % (SECRETS_DIR, name), os.path.join(root, SECRETS_DIR, name),
                              text.encode("utf-8"), SECRET_MODE_FILE))
    for name in _secret_files(root):
        if name not in written:
            entries.append(_entry("%s/%s" % (SECRETS_DIR, name),
                                  os.path.join(root, SECRETS_DIR, name), None, None))
    return entries


# ---- the compose set ----------------------------------------------------------------------

def compose_files(plan, compose_runtime):
    """COMPOSE_FILE: compose.yml, and the GPU overlay of the runtime when the plan has GPUs."""
    return ["compose.yml"] + ([COMPOSE_OVERLAY[compose_runtime]] if plan.get("gpu_overlay")
                              else [])


def _strip_header(text):
    for header in (HEADER + "\n", _ANSIBLE_MANAGED):
        if text.startswith(header):
            return text[len(header):]
    return text


def _yaml(doc, yaml_dump):
    return yaml_dump(doc, **YAML_DUMP_OPTIONS)


def _load_yaml(data, yaml_load):
    """The YAML document of a file's bytes, or None when there is none or it is bad."""
    if data is None:
        return None
    try:
        return yaml_load(_text(data))
    except Exception:  # a damaged file: rewritten, every service counted as changed
        return None


def _compose_set(plan, opts, yaml_dump, yaml_load, stamp):
    root = opts["project_dir"]
    if not isinstance(plan.get("dual_gpu_mode"), str):
        raise ValueError("plan.dual_gpu_mode must be the mode of the services_plan fact; got: %r"
                         % (plan.get("dual_gpu_mode"),))
    entries = []
    for name, kind in COMPOSE_FILES:
        doc = _rendering(_render.compose_document, plan, kind, project=opts["project_name"])
        text = "%s\n%s" % (HEADER, _yaml(doc, yaml_dump))
        entries.append(_entry(name, os.path.join(root, name), text.encode("utf-8"), FILE_MODE))
    found = _read(os.path.join(root, DOTENV))
    owned = {"COMPOSE_PROJECT_NAME": opts["project_name"],
             "COMPOSE_FILE": ":".join(compose_files(plan, opts["compose_runtime"])),
             "COMPOSE_PROFILES": ",".join(map(str, plan["compose_profiles"])),
             "DUAL_GPU_MODE": plan["dual_gpu_mode"],
             # The host's recorded mode: what the next run converges when none is given.
             "INFERENCE_MODE": (plan.get("mode") or {}).get("name") or plan["dual_gpu_mode"]}
    owned.update(opts["env"])
    existing = _strip_header(_text(found[0])) if found is not None else ""
    text = "%s\n%s" % (HEADER, _common.dotenv_merge(existing, owned))
    entries.append(_entry(DOTENV, os.path.join(root, DOTENV),
                          text.encode("utf-8", "surrogateescape"), SECRET_MODE))
    path = os.path.join(root, ASSIGNMENTS)
    found = _read(path)
    previous = _load_yaml(None if found is None else found[0], yaml_load)
    if not isinstance(previous, dict) or not isinstance(previous.get("generated_at"), str):
        previous = None
    doc = _rendering(_render.gpu_assignments_document, plan, previous, stamp)
    text = "%s\n%s\n%s" % (HEADER, _ASSIGNMENTS_COMMENT, _yaml(doc, yaml_dump))
    entries.append(_entry(ASSIGNMENTS, path, text.encode("utf-8"), FILE_MODE))
    services = [s.get("name") for s in plan["services"] if isinstance(s, dict)]
    entries += _secret_entries(plan, opts, root, services,
                               lambda value, _where: _common.dotenv_value(value))
    return entries


def _compose_state(docs, env_text):
    """Which files, profiles and service definitions a compose project's files give."""
    files = (_common.dotenv_get(env_text, "COMPOSE_FILE") or "compose.yml").split(":")
    profiles = [p for p in (_common.dotenv_get(env_text, "COMPOSE_PROFILES") or "").split(",")
                if p]
    base = docs.get("compose.yml") or {}
    services = base.get("services") if isinstance(base.get("services"), dict) else {}
    defined = {}
    active = []
    for name, service in services.items():
        defined[name] = []
        for file in files:
            doc = docs.get(file) if isinstance(docs.get(file), dict) else {}
            more = doc.get("services") if isinstance(doc.get("services"), dict) else {}
            if more.get(name) is not None:  # an overlay without the service changes nothing
                defined[name].append((file, more[name]))
        wanted = service.get("profiles") if isinstance(service, dict) else None
        if not wanted or set(wanted) & set(profiles):
            active.append(name)
    return {"name": base.get("name"), "defined": defined, "active": active}


def _compose_services(changes, yaml_load):
    """``(services_changed, services_removed)``: what ``up`` would (re)create, and what ran
    under the files on disk but is not active under the new ones."""
    before_docs, after_docs = {}, {}
    before_env = after_env = None
    for change in changes:
        if _is_secret(change["key"]):
            continue
        if change["key"] == DOTENV:
            before_env = _text(change["before"]) if change["before"] is not None else None
            after_env = _text(change["content"])
        elif change["key"] != ASSIGNMENTS:
            before_docs[change["key"]] = _load_yaml(change["before"], yaml_load)
            after_docs[change["key"]] = _load_yaml(change["content"], yaml_load)
    old = _compose_state(before_docs, before_env) if before_env is not None \
        else {"name": None, "defined": {}, "active": []}
    new = _compose_state(after_docs, after_env)
    renamed = old["name"] != new["name"]
    secrets = {c["key"][len(SECRETS_DIR) + 1:-len(".env")] for c in changes
               if _is_secret(c["key"]) and c["state"] != "unchanged"}
    changed = [name for name in new["active"]
               if renamed or name not in old["active"] or name in secrets
               or old["defined"].get(name) != new["defined"][name]]
    removed = [name for name in old["active"] if name not in new["active"]]
    return changed, removed


# ---- the systemd set ----------------------------------------------------------------------

def _unit_options(opts, plan=None):
    options = {key: opts[key] for key in ("user", "group", "env_dir", "models_dir", "ollama_bin",
                                          "vllm_bin", "state_dir_name")}
    sources = (plan or {}).get("sources") or {}
    options.update(hf_home=sources.get("hf_home"))
    return options


def _files_in(directory, wanted):
    """Names of the plain files (not links) of ``directory`` now for which ``wanted(name)``."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as exc:
        raise FilesetError("cannot list %s: %s" % (directory, _why(exc))) from None
    return sorted(n for n in names if wanted(n)
                  and os.path.isfile(os.path.join(directory, n))
                  and not os.path.islink(os.path.join(directory, n)))


def _env_files(env_dir):
    """Names of the <name>.env files in env_dir now."""
    return _files_in(env_dir, _is_env_name)


def _instance_unit(name, data):
    """The unit an <instance>.env belongs to: its comment line says, else its keys."""
    text = _text(data)
    match = _UNIT_LINE_RE.search(text)
    if match:
        return match.group(1)
    engine = "vllm" if re.search(r"^VLLM_MODEL=", text, re.MULTILINE) else "ollama"
    return "%s@%s.service" % (engine, name[:-len(".env")])


def _env_entry(env_dir, service, unit, comment, env_lines):
    """env/<service>.env: the header, the line naming its unit, its NAME=value lines."""
    name = "%s.env" % service
    lines = [HEADER, comment % unit, *env_lines]
    return _entry("env/" + name, os.path.join(env_dir, name),
                  "".join(line + "\n" for line in lines).encode("utf-8"), SECRET_MODE)


def _removals(prefix, directory, names, planned):
    """Entries that remove the files ``names`` of ``directory`` the plan does not have."""
    return [_entry(prefix + name, os.path.join(directory, name), None, None)
            for name in names if name not in planned]


def _systemd_set(plan, opts):
    instances = _rendering(_render.systemd_instances, plan, opts["models_dir"],
                           opts["bind_address"])
    unit_options = _unit_options(opts, plan)
    entries = []
    for engine in ENGINES:
        name = "%s@.service" % engine
        text = "%s\n%s" % (HEADER, _render.systemd_unit(engine, unit_options))
        entries.append(_entry("units/" + name, os.path.join(opts["units_dir"], name),
                              text.encode("utf-8"), FILE_MODE))
    for instance in instances:
        entries.append(_env_entry(opts["env_dir"], instance["service"], instance["unit"],
                                  _INSTANCE_COMMENT, instance["env_lines"]))
    entries += _removals("env/", opts["env_dir"], _env_files(opts["env_dir"]),
                         {"%s.env" % i["service"] for i in instances})
    entries += _secret_entries(plan, opts, opts["env_dir"], [i["service"] for i in instances],
                               lambda value, _where: _render.systemd_env_value(value))
    return instances, entries


# ---- the podman set -----------------------------------------------------------------------

def _container_files(units_dir):
    """Names of the gpufleet-<service>.container files in units_dir now."""
    return _files_in(units_dir, _CONTAINER_FILE_RE.match)


def _container_unit(name):
    """The service systemd generates from <name>.container."""
    return name[:-len(".container")] + ".service"


def _podman_secret_value(value, where):
    text = _common.scalar_text(value)
    if "\n" in text or "\r" in text:
        raise ValueError("%s must be one line (Podman's environment file has no quoting; "
                         "value not shown)" % where)
    return text


def _podman_set(plan, opts):
    units = _rendering(_quadlet.container_units, plan, opts["env_dir"], opts["bind_address"])
    network = "%s\n%s" % (HEADER, _quadlet.network_unit())
    entries = [_entry("units/" + _quadlet.NETWORK_FILE,
                      os.path.join(opts["units_dir"], _quadlet.NETWORK_FILE),
                      network.encode("utf-8"), FILE_MODE)]
    for unit in units:
        text = "%s\n%s\n%s" % (HEADER, _CONTAINER_COMMENT % unit["unit"], unit["text"])
        entries.append(_entry("units/" + unit["file"],
                              os.path.join(opts["units_dir"], unit["file"]),
                              text.encode("utf-8"), FILE_MODE))
        entries.append(_env_entry(opts["env_dir"], unit["service"], unit["unit"],
                                  _CONTAINER_COMMENT, unit["env_lines"]))
    entries += _removals("units/", opts["units_dir"], _container_files(opts["units_dir"]),
                         {u["file"] for u in units})
    entries += _removals("env/", opts["env_dir"], _env_files(opts["env_dir"]),
                         {"%s.env" % u["service"] for u in units})
    entries += _secret_entries(plan, opts, opts["env_dir"], [u["service"] for u in units],
                               _podman_secret_value)
    return units, entries


# ---- verify -------------------------------------------------------------------------------

def _probe_host(address):
    """Where a check reaches a listener: loopback unless it listens on one other address."""
    if not address or address in _WILDCARDS:
        return "127.0.0.1"
    return "[%s]" % address if ":" in address else address


def _url(address, port, path):
    if port is None or not path:
        return None
    return "http://%s:%s%s" % (_probe_host(address), port, path)


def _vendor(place):
    """The placement's vendor for the verify, left out on the CPU (the module's choices)."""
    return {"vendor": place["vendor"]} if place.get("vendor") else {}


def verify_checks(plan, runtime, project_name="gpufleet",
                  models_dir=SYSTEMD_DEFAULTS["models_dir"],
                  bind_address=_render.DEFAULT_BIND_ADDRESS):
    """What a verifier checks for each active service of the plan.

    Each: ``name``, ``engine``, ``model``, ``url`` (the health endpoint on the host, None when
    the service has none or publishes no port for it), ``device_id``, ``gpu_index`` and
    ``vendor`` of the placement (None on the CPU, and no ``vendor``); compose adds ``project``
    and ``service`` (the container is ``<project>-<service>-1``), systemd adds ``unit`` and
    ``cuda_visible_devices`` (what the unit's main process must have), podman adds ``unit``
    (``gpufleet-<service>.service``) and ``container`` (``gpufleet-<service>``). A listener bound to
    0.0.0.0, ``::`` or loopback is probed on 127.0.0.1; one bound to another address, on that
    address.
    """
    _check_plan(plan)
    if runtime not in RUNTIMES:
        raise ValueError("runtime must be one of %s; got: %r" % (", ".join(RUNTIMES), runtime))
    services = {s.get("name"): s for s in plan["services"] if isinstance(s, dict)}
    checks = []
    if runtime in ("compose", "podman"):
        for service in plan["services"]:
            if not service.get("active"):
                continue
            health = service.get("health") or {}
            ports = service.get("ports") or []
            container = health.get("port", ports[0]["container"] if ports else None)
            port = next((p for p in ports if p.get("container") == container), None)
            url = _url(port and port.get("address"), port and port.get("host"),
                       health.get("path"))
            place = service.get("placement") or {}
            where = ({"project": project_name, "service": service["name"]}
                     if runtime == "compose" else
                     {"unit": _quadlet.unit_name(service["name"]),
                      "container": _quadlet.container_name(service["name"])})
            checks.append({"name": service["name"], "engine": service.get("engine"),
                           "model": service.get("model"), "url": url,
                           "device_id": place.get("device_id"),
                           "gpu_index": place.get("gpu_index"), **where, **_vendor(place)})
        return checks
    instances = _rendering(_render.systemd_instances, plan, models_dir, bind_address)
    for instance in instances:
        service = services[instance["service"]]
        env = instance["environment"]
        if "VLLM_PORT" in env:
            address, port = env.get("VLLM_HOST"), env["VLLM_PORT"]
        else:
            address, _sep, port = env.get("OLLAMA_HOST", "").rpartition(":")
            address = address.strip("[]")
        url = _url(address, port or None, (service.get("health") or {}).get("path"))
        place = service.get("placement") or {}
        checks.append({"name": instance["service"], "engine": instance["template"],
                       "model": service.get("model"), "url": url,
                       "device_id": place.get("device_id"), "gpu_index": place.get("gpu_index"),
                       "unit": instance["unit"], **_vendor(place),
                       "cuda_visible_devices": env.get("CUDA_VISIBLE_DEVICES", "")})
    return checks


# ---- the two states -----------------------------------------------------------------------

def _utc_now():
    return datetime.datetime.now(datetime.timezone.utc)


def _files(changes):
    return [{"path": c["path"], "state": c["state"]} for c in changes]


def _prepare(runtime, opts, changes=()):
    if runtime == "compose":
        _makedirs(opts["project_dir"], DIR_MODE)
    else:  # systemd, podman
        _makedirs(opts["units_dir"], DIR_MODE)
        _makedirs(opts["env_dir"], DIR_MODE)
    if any(_is_secret(c["key"]) and c["content"] is not None for c in changes):
        folder = os.path.join(opts["project_dir"] if runtime == "compose" else opts["env_dir"],
                              SECRETS_DIR)
        _makedirs(folder, SECRET_DIR_MODE)
        try:
            os.chmod(folder, SECRET_DIR_MODE)  # whoever made it before
        except OSError as exc:
            raise FilesetError("cannot make %s mode 0700: %s" % (folder, _why(exc))) from None


def present(runtime, plan, options=None, check_mode=False, yaml_dump=None, yaml_load=None,
            now=None, mover=None):
    """Bring the set of ``runtime`` to ``plan``; returns the module's result.

    ``yaml_dump`` / ``yaml_load`` are ``yaml.dump`` / ``yaml.safe_load`` (or Ansible's
    module_utils.common.yaml ones), needed for compose; ``now`` returns the UTC time;
    ``mover(src, dest)`` renames atomically (``os.replace`` by default, the module passes
    ``AnsibleModule.atomic_move``). Nothing is written when anything is bad, nor in check mode.
    """
    opts = check_options(runtime, options)
    _check_plan(plan)
    mover = mover or os.replace
    if runtime == "compose":
        if yaml_dump is None or yaml_load is None:
            raise ValueError("runtime compose needs a YAML dumper and loader (PyYAML)")
        stamp = (now or _utc_now)().strftime(TIMESTAMP_FORMAT)
        entries = _compose_set(plan, opts, yaml_dump, yaml_load, stamp)
    elif runtime == "systemd":
        instances, entries = _systemd_set(plan, opts)
    else:
        containers, entries = _podman_set(plan, opts)
    changes = _compare(entries)
    result = {"changed": any(c["state"] != "unchanged" for c in changes),
              "diff": _diff(changes), "files": _files(changes),
              "snapshot_dir": opts["snapshot_dir"]}
    if runtime == "compose":
        changed, removed = _compose_services(changes, yaml_load)
        result.update(compose_files=compose_files(plan, opts["compose_runtime"]),
                      compose_profiles=list(plan["compose_profiles"]),
                      services_changed=changed, services_removed=removed,
                      verify=verify_checks(plan, runtime, project_name=opts["project_name"]))
    elif runtime == "podman":
        written = _written(changes)
        result.update(
            instances=[u["unit"] for u in containers],
            units_changed=any(k.startswith("units/") for k in written),
            restart=[u["unit"] for u in containers
                     if {"units/" + u["file"], "env/%s.env" % u["service"],
                         "%s/%s.env" % (SECRETS_DIR, u["service"])} & written],
            stale_instances=[_container_unit(c["key"][len("units/"):]) for c in changes
                             if c["state"] == "removed" and c["key"].startswith("units/")],
            verify=verify_checks(plan, runtime))
    else:
        written = _written(changes)
        templates = {e for e in ENGINES if "units/%s@.service" % e in written}
        result.update(
            instances=[i["unit"] for i in instances],
            units_changed=bool(templates),
            restart=[i["unit"] for i in instances
                     if "env/%s.env" % i["service"] in written or i["template"] in templates
                     or "%s/%s.env" % (SECRETS_DIR, i["service"]) in written],
            stale_instances=[_instance_unit(c["key"][len("env/"):], c["before"])
                             for c in changes if c["state"] == "removed"
                             and c["key"].startswith("env/")],
            verify=verify_checks(plan, runtime, models_dir=opts["models_dir"],
                                 bind_address=opts["bind_address"]))
    if not check_mode:
        _prepare(runtime, opts, changes)
        _save_snapshot(opts["snapshot_dir"], runtime, changes, mover)
        if result["changed"]:
            _commit(changes, mover)
    return result


def _written(changes):
    """The keys a write changes: new or different content, and removed secret files."""
    written = {c["key"] for c in changes
               if c["state"] in ("created", "changed") and c["content"] != c["before"]}
    return written | {c["key"] for c in changes
                      if _is_secret(c["key"]) and c["state"] == "removed"}


def active_services(compose_text, profiles, yaml_load):
    """The services a compose file starts with ``profiles`` (what ``docker compose config
    --services`` lists): those without profiles, and those with one of ``profiles``."""
    doc = yaml_load(compose_text) if compose_text else None
    services = (doc or {}).get("services") or {}
    wanted = set(profiles)
    return sorted(name for name, svc in services.items()
                  if not (svc or {}).get("profiles") or wanted & set(svc["profiles"]))


def restored(runtime, options=None, check_mode=False, mover=None, yaml_load=None):
    """Put the snapshot of ``runtime``'s set back byte for byte; returns the module's result.

    Files the snapshot records as absent are removed (after a first apply: every file it
    wrote); for systemd, so are <instance>.env files the snapshot does not have. For compose,
    ``services`` are the services the restored files start (with ``yaml_load``, else None).
    """
    opts = check_options(runtime, options)
    mover = mover or os.replace
    entries = _load_snapshot(opts, runtime)
    known = {e["key"] for e in entries}
    # Files of the set there now that the snapshot does not have are removed too:
    # (key prefix, directory, their names now).
    unknown = []
    if runtime in ("systemd", "podman"):
        unknown.append(("env/", opts["env_dir"], _env_files(opts["env_dir"])))
    if runtime == "podman":
        unknown.append(("units/", opts["units_dir"], _container_files(opts["units_dir"])))
    root = opts["project_dir"] if runtime == "compose" else opts["env_dir"]
    unknown.append((SECRETS_DIR + "/", os.path.join(root, SECRETS_DIR), _secret_files(root)))
    for prefix, directory, names in unknown:
        entries += _removals(prefix, directory, names,
                             {key[len(prefix):] for key in known if key.startswith(prefix)})
    changes = _compare(entries)
    existed = [e for e in entries if e["content"] is not None]
    result = {"changed": any(c["state"] != "unchanged" for c in changes),
              "diff": _diff(changes), "files": _files(changes),
              "snapshot_dir": opts["snapshot_dir"], "previous_existed": bool(existed)}
    if runtime == "compose":
        env = next((_text(e["content"]) for e in existed if e["key"] == DOTENV), None)
        result.update(
            compose_files=(_common.dotenv_get(env, "COMPOSE_FILE") or "compose.yml").split(":"),
            compose_profiles=[p for p in (_common.dotenv_get(env, "COMPOSE_PROFILES") or "")
                              .split(",") if p])
        base = next((_text(e["content"]) for e in existed if e["key"] == "compose.yml"), None)
        result["services"] = (active_services(base, result["compose_profiles"], yaml_load)
                              if yaml_load else None)
    elif runtime == "podman":
        result["instances"] = sorted(_container_unit(e["key"][len("units/"):]) for e in existed
                                     if _CONTAINER_FILE_RE.match(e["key"][len("units/"):]))
    else:
        result["instances"] = sorted(_instance_unit(e["key"][len("env/"):], e["content"])
                                     for e in existed if e["key"].startswith("env/"))
    if not check_mode and result["changed"]:
        _prepare(runtime, opts, changes)
        _commit(changes, mover)
    return result
