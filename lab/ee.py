#!/usr/bin/env python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The execution environment built for real and run the way AWX runs a job (lab/README.md,
"Execution environment"; README "Execution environment").

  lab/ee.py base                   the EE's base image, made locally (no registry)
  lab/ee.py build                  base, then ansible-builder builds execution-environment.yml
                                   on it (offline: collections and wheels from this machine)
  lab/ee.py run [--host lab-edge] [--image TAG] [--runs N] [--extra-vars JSON]
                                   ansible-runner runs site.yml in the EE against one lab host
                                   (started with lab/lab.py up), N times (default 2: converge,
                                   then a run that must change nothing)
  lab/ee.py all [--host lab-edge]  build, then run

Images (on the lab's engine, lab/engine.sh): gpufleet-ee-base:<hash> (mmdebstrap minbase +
lab/ee-base-packages.txt; not rebuilt while its tag exists) and gpufleet-ee-inference:lab.
The EE is the one execution-environment.yml defines, with what the lab cannot fetch swapped:

- images.base_image: gpufleet-ee-base (quay.io is unreachable), its package manager apt-get,
  its interpreter /usr/bin/python3 (Debian bookworm: Python 3.11, as the EE file asks) and
  Debian's pip (skip_pip_install: Debian disables ensurepip for the system Python).
- dependencies.galaxy: the same collections as Galaxy artifacts (type: file) instead of Galaxy
  names, installed with `ansible-galaxy collection install --offline`: this collection from
  `ansible-galaxy collection build`, the others packed from what lab/vendor-collections.sh took
  from the PyPI ansible wheel.
- pip: the build's pip reads only a wheelhouse: the wheels of every requirement (the EE file's,
  ee/requirements.txt, the collections' own, ansible-builder's tools) downloaded here, served
  on 127.0.0.1 during the build (`docker build --network host`), named in an /etc/pip.conf
  that the base stage writes and the final stage removes: nothing of it stays in the image.

Python requirements, bindep, ansible-core and ansible-runner are the EE file's own, unchanged.
A run is a private data directory (project/site.yml imports gpufleet.inference.site, as an AWX
project of a user does; inventory/ the one host) given to `ansible-runner run --process-isolation
--process-isolation-executable docker --container-image <EE>`; the EE container reaches the host
through the lab engine's socket, mounted in, with community.docker.docker_api (an EE has no
docker CLI). A run fails loudly: ansible-runner's rc and status, and the recap's failed and
unreachable counts of the host, are checked; a second run must report changed=0.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import hashlib
import http.server
import io
import json
import os
import shutil
import socketserver
import subprocess
import sys
import tarfile
import threading
import time

import yaml

LAB = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(LAB)
BIN = os.path.dirname(os.path.abspath(sys.executable))
WORK = os.path.join(ROOT, ".build", "ee")
BASE_REPO = "gpufleet-ee-base"
EE_TAG = "gpufleet-ee-inference:lab"
BASE_PACKAGES = os.path.join(LAB, "ee-base-packages.txt")
# Bump when the mmdebstrap recipe below changes (the base tag hashes the package list and this).
RECIPE = 2
# On the base image, so on every image built from it: the build's stage images (the legacy
# builder keeps them untagged) can be told from other builds' on the shared engine.
BASE_LABEL = "org.gpufleet.ee-base"
VENDORED = os.path.join(ROOT, ".build", "collections", "ansible_collections")
# The collections of ee/requirements.yml by Galaxy name, and what community.docker needs.
VENDORED_COLLECTIONS = ("community/docker", "ansible/posix",
                        "community/library_inventory_filtering_v1")
# What ansible-builder's Containerfile installs with pip besides the requirement files: its
# tools in the builder stage, and dumb-init in the final one (ansible_builder/containerfile.py).
BUILDER_TOOLS = ("bindep", "pyyaml", "packaging", "dumb-init==1.2.5")
# The wheelhouse's address during a build. Fixed: docker caches a RUN step only while its
# build arguments are the same.
PIP_CONF = ("RUN printf '[global]\\nno-index = true\\nfind-links = %s\\n' \"$PIP_FIND_LINKS\" "
            "> /etc/pip.conf")
WHEELS_PORT = int(os.environ.get("GPUFLEET_EE_WHEELS_PORT", "38417"))
# What a lab host needs from its group (inventory/lab/group_vars/lab.yml), less how the lab
# itself reaches it (ansible_connection: the docker CLI) and the lab tool's own lab_* keys.
LAB_GROUP_VARS = os.path.join(ROOT, "inventory", "lab", "group_vars", "lab.yml")


class EEError(Exception):
    pass


def log(msg):
    sys.stderr.write("lab/ee.py: %s\n" % msg)
    sys.stderr.flush()


def run(cmd, check=True, **kwargs):
    proc = subprocess.run(cmd, check=False, **kwargs)
    if check and proc.returncode != 0:
        raise EEError("%s failed (rc %d)" % (" ".join(cmd[:3]), proc.returncode))
    return proc


def have_image(tag):
    return subprocess.run(["docker", "image", "inspect", tag], capture_output=True,
                          check=False).returncode == 0


def image_id(tag):
    proc = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", tag],
                          capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def ensure_engine():
    if not os.environ.get("DOCKER_HOST"):
        proc = run([os.path.join(LAB, "engine.sh"), "ensure"], capture_output=True, text=True)
        os.environ["DOCKER_HOST"] = proc.stdout.strip()
    return os.environ["DOCKER_HOST"]


# --- 1. the base image ------------------------------------------------------------------------


def mirror_source():
    """The apt sources of this machine (mmdebstrap pastes a file given as its mirror): the
    same files lab/image/build.sh reads, never written into the repository."""
    for path in ("/etc/apt/sources.list.d/debian.sources", "/etc/apt/sources.list"):
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                if any(line.strip() and not line.lstrip().startswith("#") for line in handle):
                    return path
    raise EEError("no apt sources in /etc/apt (debian.sources or sources.list)")


def packages(path):
    with open(path, encoding="utf-8") as handle:
        return [line.split("#")[0].strip() for line in handle if line.split("#")[0].strip()]


def base_image():
    """gpufleet-ee-base:<hash of the package list and recipe>, built unless it exists."""
    with open(BASE_PACKAGES, "rb") as handle:
        digest = hashlib.sha256(handle.read() + b"recipe %d" % RECIPE).hexdigest()[:16]
    tag = "%s:%s" % (BASE_REPO, digest)
    if have_image(tag):
        return tag, 0.0
    if not shutil.which("mmdebstrap"):
        raise EEError("mmdebstrap missing: apt-get install -y mmdebstrap (make lab-setup)")
    t0 = time.time()
    os.makedirs(WORK, exist_ok=True)
    log_path = os.path.join(WORK, "mmdebstrap-base.log")
    log("building %s with mmdebstrap from %s" % (tag, mirror_source()))
    # The recipe of lab/image/build.sh (debootstrap_import): minbase, merged /usr, no docs.
    mmdebstrap = [
        "mmdebstrap", "--quiet", "--variant=minbase",
        "--include=%s" % ",".join(packages(BASE_PACKAGES)),
        "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
        "--dpkgopt=path-exclude=/usr/share/man/*",
        "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright",
        "--dpkgopt=path-exclude=/usr/share/locale/*",
        "--dpkgopt=path-exclude=/usr/share/info/*",
        '--customize-hook=rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin',
        "bookworm", "-", mirror_source(),
    ]
    with open(log_path, "wb") as err:
        maker = subprocess.Popen(mmdebstrap, stdout=subprocess.PIPE, stderr=err)
        imported = subprocess.run(["docker", "import", "-c", 'CMD ["/bin/bash"]',
                                   "-c", "LABEL %s=%s" % (BASE_LABEL, digest), "-", tag],
                                  stdin=maker.stdout, capture_output=True, check=False)
        maker.stdout.close()
        made = maker.wait()
    if made != 0 or imported.returncode != 0:
        with open(log_path, encoding="utf-8", errors="replace") as handle:
            tail = "".join(handle.readlines()[-20:])
        raise EEError("building %s failed (mmdebstrap rc %d, docker import rc %d): %s%s"
                      % (tag, made, imported.returncode, tail, imported.stderr.decode()))
    # Older bases of ours only.
    listed = run(["docker", "image", "ls", BASE_REPO, "--format", "{{.Repository}}:{{.Tag}}"],
                 capture_output=True, text=True).stdout.split()
    for old in listed:
        if old != tag:
            run(["docker", "rmi", old], check=False, capture_output=True)
    return tag, time.time() - t0


# --- 2. the build context: collections, wheelhouse, the lab's EE file ----------------------


def _sha256(path):
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def artifact(src, dest_dir):
    """Pack an installed collection (MANIFEST.json and its files) as a Galaxy artifact.

    The PyPI ansible bundle leaves out files that the FILES.json it keeps lists (CI configs),
    and ansible-galaxy refuses such a tarball: FILES.json is written again for the files there.
    """
    with open(os.path.join(src, "MANIFEST.json"), encoding="utf-8") as handle:
        manifest = json.load(handle)
    info = manifest["collection_info"]
    entries = [{"name": ".", "ftype": "dir", "chksum_type": None, "chksum_sha256": None,
                "format": 1}]
    members = []
    for top, dirs, files in os.walk(src):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in dirs + sorted(files):
            path = os.path.join(top, name)
            rel = os.path.relpath(path, src)
            if rel in ("MANIFEST.json", "FILES.json") or name.endswith(".pyc"):
                continue
            is_file = os.path.isfile(path)
            entries.append({"name": rel, "ftype": "file" if is_file else "dir",
                            "chksum_type": "sha256" if is_file else None,
                            "chksum_sha256": _sha256(path) if is_file else None, "format": 1})
            members.append((path, rel))
    files_json = json.dumps({"files": entries, "format": 1}, indent=4).encode()
    manifest["file_manifest_file"]["chksum_sha256"] = hashlib.sha256(files_json).hexdigest()
    name = "%s-%s-%s.tar.gz" % (info["namespace"], info["name"], info["version"])
    with tarfile.open(os.path.join(dest_dir, name), "w:gz") as tar:
        for member_name, data in (("MANIFEST.json", json.dumps(manifest, indent=4).encode()),
                                  ("FILES.json", files_json)):
            member = tarfile.TarInfo(member_name)
            member.size, member.mode = len(data), 0o644
            tar.addfile(member, io.BytesIO(data))
        for path, rel in members:
            tar.add(path, arcname=rel, recursive=False)
    return "%s.%s" % (info["namespace"], info["name"]), name


def collections(src_dir):
    """dist/ (this collection, built) and deps/ (the vendored ones, packed) under ``src_dir``;
    returns {Galaxy name: requirement of the lab's requirements.yml}."""
    run([os.path.join(LAB, "vendor-collections.sh")], env=dict(os.environ, PYTHON=sys.executable))
    dist, deps = os.path.join(src_dir, "dist"), os.path.join(src_dir, "deps")
    for path in (dist, deps):
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
    proc = run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", ROOT,
                "--output-path", dist], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EEError("ansible-galaxy collection build failed: %s" % (proc.stdout + proc.stderr))
    found = {}
    for coll in VENDORED_COLLECTIONS:
        name, tarball = artifact(os.path.join(VENDORED, coll), deps)
        found[name] = {"name": "collections/%s" % tarball, "type": "file"}
    return found


def lab_definition(src_dir, base_tag, vendored):
    """Write the lab's EE file and requirements.yml beside a copy of ee/ (in ``src_dir``):
    execution-environment.yml with only what the lab cannot fetch swapped (module docstring)."""
    with open(os.path.join(ROOT, "execution-environment.yml"), encoding="utf-8") as handle:
        definition = yaml.safe_load(handle)
    shutil.rmtree(os.path.join(src_dir, "ee"), ignore_errors=True)
    shutil.copytree(os.path.join(ROOT, "ee"), os.path.join(src_dir, "ee"))
    with open(os.path.join(ROOT, definition["dependencies"]["galaxy"]), encoding="utf-8") as h:
        wanted = yaml.safe_load(h)["collections"]
    lab_collections = []
    for req in wanted:
        if req.get("type") == "file":
            lab_collections.append(req)  # this collection, as additional_build_files has it
        elif req["name"] in vendored:
            lab_collections.append(vendored[req["name"]])
        else:
            raise EEError("%s (ee/requirements.yml) is not vendored by "
                          "lab/vendor-collections.sh" % req["name"])
    # What the collections above need (community.docker: library_inventory_filtering_v1).
    named = {req["name"] for req in lab_collections}
    lab_collections += [req for req in vendored.values() if req["name"] not in named]
    galaxy = "ee/requirements.lab.yml"
    with open(os.path.join(src_dir, galaxy), "w", encoding="utf-8") as handle:
        handle.write("---\n# Written by lab/ee.py: ee/requirements.yml as Galaxy artifacts.\n")
        yaml.safe_dump({"collections": lab_collections}, handle, sort_keys=False)

    definition["images"]["base_image"]["name"] = base_tag
    definition["dependencies"]["python_interpreter"] = {
        "package_system": "python3", "python_path": "/usr/bin/python3"}
    definition["dependencies"]["galaxy"] = galaxy
    # Debian's pip: its ensurepip is disabled for the system Python.
    definition.setdefault("options", {}).update(
        {"package_manager_path": "/usr/bin/apt-get", "skip_pip_install": True})
    definition.setdefault("additional_build_files", []).append(
        {"src": "deps/*.tar.gz", "dest": "collections"})
    # The wheelhouse, for the pip of every stage: a pip.conf that the base stage writes from
    # build arguments (later stages start from it) and the final stage removes again. An ENV
    # would stay in the image, and an ARG reaches only the steps of its own stage.
    steps = definition.setdefault("additional_build_steps", {})
    steps["prepend_base"] = [
        "ARG PIP_FIND_LINKS", PIP_CONF, *steps.get("prepend_base", [])]
    steps["append_final"] = [*steps.get("append_final", []), "RUN rm -f /etc/pip.conf"]
    path = os.path.join(src_dir, "execution-environment.yml")
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("---\n# Written by lab/ee.py from execution-environment.yml.\n")
        yaml.safe_dump(definition, handle, sort_keys=False)
    return path, definition


def wheelhouse(src_dir, definition):
    """Download (here, where PyPI answers) the wheels of everything the build installs with
    pip into .build/ee/wheels; returns that directory."""
    wheels = os.path.join(WORK, "wheels")
    os.makedirs(wheels, exist_ok=True)
    combined = os.path.join(src_dir, "introspected-requirements.txt")
    # The same combination as the build's own introspect step: ee/requirements.txt and the
    # requirements of the collections (meta/execution-environment.yml).
    run([os.path.join(BIN, "ansible-builder"), "introspect", "--sanitize",
         "--user-pip", os.path.join(src_dir, definition["dependencies"]["python"]),
         "--write-pip", combined, os.path.dirname(VENDORED)], capture_output=True)
    deps = definition["dependencies"]
    refs = [deps["ansible_core"]["package_pip"], deps["ansible_runner"]["package_pip"],
            *BUILDER_TOOLS]
    proc = run([sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
                "--only-binary=:all:", "--dest", wheels, "-r", combined, *refs,
                "-c", os.path.join(ROOT, "requirements", "constraints.txt")],
               capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise EEError("pip download of the EE's wheels failed: %s" % proc.stderr[-3000:])
    return wheels


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # the base class names it so
        pass


@contextlib.contextmanager
def serve(directory):
    """The wheelhouse on http://127.0.0.1:WHEELS_PORT/ while the build runs."""

    def handler(*args, **kwargs):
        return _QuietHandler(*args, directory=directory, **kwargs)

    socketserver.TCPServer.allow_reuse_address = True
    try:
        server = socketserver.ThreadingTCPServer(("127.0.0.1", WHEELS_PORT), handler)
    except OSError as exc:
        raise EEError("cannot serve the wheelhouse on 127.0.0.1:%d (%s); set "
                      "GPUFLEET_EE_WHEELS_PORT to a free port" % (WHEELS_PORT, exc)) from None
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield "http://127.0.0.1:%d/" % WHEELS_PORT
    finally:
        server.shutdown()
        server.server_close()


def ours_untagged():
    proc = run(["docker", "image", "ls", "-q", "--no-trunc", "--filter", "dangling=true",
                "--filter", "label=%s" % BASE_LABEL], capture_output=True, text=True)
    return set(proc.stdout.split())


def build(verbosity=1):
    """Base image, then ansible-builder build; returns (tag, {step: seconds})."""
    ensure_engine()
    timings = {}
    base_tag, timings["base"] = base_image()
    t0 = time.time()
    src_dir = os.path.join(WORK, "src")
    os.makedirs(src_dir, exist_ok=True)
    path, definition = lab_definition(src_dir, base_tag, collections(src_dir))
    wheels = wheelhouse(src_dir, definition)
    timings["context"] = time.time() - t0
    t0 = time.time()
    before = image_id(EE_TAG)
    stale = ours_untagged()
    with serve(wheels) as url:
        proc = run([os.path.join(BIN, "ansible-builder"), "build", "-f", path,
                    "-c", os.path.join(WORK, "context"), "-t", EE_TAG,
                    "--container-runtime", "docker", "-v", str(verbosity),
                    "--build-arg", "PIP_FIND_LINKS=%s" % url,
                    "--build-arg", "ANSIBLE_GALAXY_CLI_COLLECTION_OPTS=--offline",
                    # Nothing to clean: the lab base has no package lists.
                    "--build-arg", "PKGMGR_PRESERVE_CACHE=always",
                    "--extra-build-cli-args=--network host --force-rm"],
                   check=False, cwd=src_dir, env=dict(os.environ, DOCKER_BUILDKIT="0"))
    if proc.returncode != 0:
        raise EEError("ansible-builder build failed (rc %d); the output above says where"
                      % proc.returncode)
    after = image_id(EE_TAG)
    # The EE this build replaced, and the untagged stage images of earlier builds (those still
    # a parent of a kept image stay: docker refuses to remove them).
    for old in ([before] if before and before != after else []) + sorted(stale):
        run(["docker", "rmi", old], check=False, capture_output=True)
    timings["builder"] = time.time() - t0
    return EE_TAG, timings


# --- 3. a job in the EE -------------------------------------------------------------------


def socket_path(docker_host):
    if not docker_host.startswith("unix://"):
        raise EEError("the EE reaches the lab engine through its socket; DOCKER_HOST is %s"
                      % docker_host)
    return docker_host[len("unix://"):]


def private_data_dir(pdd, host, sock, extra_vars=None):
    """What AWX hands ansible-runner: a project, an inventory, environment variables and the
    job's extra variables."""
    shutil.rmtree(pdd, ignore_errors=True)
    for sub in ("project", "inventory", "env"):
        os.makedirs(os.path.join(pdd, sub))
    with open(os.path.join(pdd, "project", "site.yml"), "w", encoding="utf-8") as handle:
        handle.write("---\n# An AWX project's playbook: the site playbook of the collection "
                     "installed in the EE.\n- name: Run gpufleet.inference.site\n"
                     "  ansible.builtin.import_playbook: gpufleet.inference.site\n")
    with open(LAB_GROUP_VARS, encoding="utf-8") as handle:
        group = {k: v for k, v in yaml.safe_load(handle).items()
                 if not k.startswith("lab_") and k != "ansible_connection"}
    # The Docker API connection (an EE has no docker CLI), to the engine's socket mounted in;
    # this connection plugin does not read DOCKER_HOST.
    group.update({"ansible_connection": "community.docker.docker_api",
                  "ansible_docker_docker_host": "unix://%s" % sock})
    inventory = {"all": {"children": {"lab": {"hosts": {host: None}, "vars": group}}}}
    with open(os.path.join(pdd, "inventory", "hosts.yml"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(inventory, handle, sort_keys=False)
    # Pipelining, as the lab's other runs: a module goes to the host on the exec's stdin, not
    # as a file put first (for which docker_api asks the container `id -u && id -g`, an exec a
    # loaded engine answered empty once: "Error while determining user and group ID").
    envvars = {"DOCKER_HOST": "unix://%s" % sock,
               "ANSIBLE_CALLBACKS_ENABLED": "gpufleet.inference.fleet_outcome",
               "ANSIBLE_NOCOLOR": "1", "ANSIBLE_PIPELINING": "1"}
    with open(os.path.join(pdd, "env", "envvars"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(envvars, handle)
    with open(os.path.join(pdd, "env", "extravars"), "w", encoding="utf-8") as handle:
        yaml.safe_dump(extra_vars or {}, handle)


def stats(artifacts):
    """The playbook_on_stats event of a run (the recap), from its job events."""
    for path in sorted(glob.glob(os.path.join(artifacts, "job_events", "*.json")),
                       key=lambda p: int(os.path.basename(p).split("-", 1)[0])):
        with open(path, encoding="utf-8") as handle:
            event = json.load(handle)
        if event.get("event") == "playbook_on_stats":
            return event["event_data"]
    return None


def job(image, host, ident, pdd, sock):
    """One ansible-runner run of site.yml in ``image``; returns the host's recap counts."""
    proc = run([os.path.join(BIN, "ansible-runner"), "run", pdd, "-p", "site.yml",
                "--ident", ident, "--process-isolation",
                "--process-isolation-executable", "docker", "--container-image", image,
                "--container-volume-mount", "%s:%s" % (sock, sock),
                # Only the engine's socket: the EE needs no network of its own.
                "--container-option=--network=none"], check=False)
    artifacts = os.path.join(pdd, "artifacts", ident)
    status = ""
    if os.path.exists(os.path.join(artifacts, "status")):
        with open(os.path.join(artifacts, "status"), encoding="utf-8") as handle:
            status = handle.read().strip()
    recap = stats(artifacts) or {}
    counts = {key: (recap.get(key) or {}).get(host, 0)
              for key in ("ok", "changed", "failures", "dark", "skipped")}
    if proc.returncode != 0 or status != "successful" or counts["failures"] or counts["dark"] \
            or not counts["ok"]:
        raise EEError("the run %s in %s failed: ansible-runner rc %d, status %r, %s: %s "
                      "(artifacts: %s)" % (ident, image, proc.returncode, status or "none", host,
                                           counts, artifacts))
    return counts


def run_jobs(image, host, runs, extra_vars=None):
    sock = socket_path(ensure_engine())
    t0 = time.time()
    up = run([sys.executable, os.path.join(LAB, "lab.py"), "up", "--hosts", host], check=False,
             capture_output=True, text=True)
    if up.returncode != 0:
        raise EEError("lab up --hosts %s failed: %s" % (host, up.stdout + up.stderr))
    timings = {"lab_up": time.time() - t0}
    pdd = os.path.join(WORK, "runner")
    private_data_dir(pdd, host, sock, extra_vars)
    for number in range(1, runs + 1):
        t0 = time.time()
        ident = "site-%d" % number
        counts = job(image, host, ident, pdd, sock)
        timings[ident] = time.time() - t0
        log("%s in %s: %s ok=%d changed=%d failed=%d unreachable=%d (%.0f s)"
            % (ident, image, host, counts["ok"], counts["changed"], counts["failures"],
               counts["dark"], timings[ident]))
        if number > 1 and counts["changed"]:
            raise EEError("%s changed %d task(s) on %s after a converged run"
                          % (ident, counts["changed"], host))
    return timings


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("command", choices=["base", "build", "run", "all"])
    parser.add_argument("--host", default="lab-edge", help="run: the lab host (inventory/lab)")
    parser.add_argument("--image", default=EE_TAG, help="run: the EE image")
    parser.add_argument("--runs", type=int, default=2,
                        help="run: how many times (the 2nd and later must change nothing)")
    parser.add_argument("--extra-vars", type=json.loads, default={},
                        help="run: the job's extra variables, as JSON (env/extravars)")
    args = parser.parse_args(argv)
    timings = {}
    try:
        for tool in ("ansible-builder", "ansible-galaxy", "ansible-runner"):
            if not os.access(os.path.join(BIN, tool), os.X_OK):
                raise EEError("%s is not beside %s: run lab/ee.py with the venv's python "
                              "(make lab-ee; requirements/ee.txt)" % (tool, sys.executable))
        if args.command == "base":
            ensure_engine()
            tag, timings["base"] = base_image()
            print(tag)
        if args.command in ("build", "all"):
            image, built = build()
            timings.update(built)
            print(image)
        if args.command in ("run", "all"):
            timings.update(run_jobs(args.image, args.host, args.runs, args.extra_vars))
    except EEError as exc:
        log("FAILED: %s" % exc)
        return 1
    log("done: %s" % ", ".join("%s %.0f s" % item for item in timings.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
