# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers shared by the benchmark scripts: the collection's import path, JSON and markdown
output, statistics, the machine the numbers were taken on, and one lab host up for a run."""

from __future__ import annotations

import contextlib
import datetime
import importlib
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENV_BIN = os.path.join(ROOT, ".venv", "bin")
COLLECTIONS = os.path.join(ROOT, ".build", "collections")


def import_collection():
    """Make ``ansible_collections.gpufleet.inference`` importable (``make setup`` links it)."""
    name = "ansible_collections.gpufleet.inference.plugins.module_utils"
    try:
        importlib.import_module(name)
    except ImportError:
        sys.path.insert(0, COLLECTIONS)
        try:
            importlib.import_module(name)
        except ImportError:
            sys.exit("bench: the collection is not importable; run `make setup` (it links this "
                     "checkout under .build/collections)")


def machine():
    """Where the numbers come from (they are only comparable within one run)."""
    try:
        commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "load": "%.1f / %.1f / %.1f" % os.getloadavg(),
        "platform": platform.platform(),
        "commit": commit or None,
    }


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(numerator, denominator):
    if numerator is None or not denominator:
        return None
    return numerator / denominator


def fmt(value, pattern="%.2f", none="-"):
    return none if value is None else pattern % value


def table(headers, rows):
    """A markdown table; every cell already a string."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(args, result, markdown):
    """--json FILE gets the result, --markdown FILE the tables; stdout always the tables."""
    if getattr(args, "json", None):
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=1, sort_keys=True)
            handle.write("\n")
    if getattr(args, "markdown", None):
        with open(args.markdown, "w", encoding="utf-8") as handle:
            handle.write(markdown.rstrip("\n") + "\n")
    print(markdown)


def add_output_args(parser):
    parser.add_argument("--json", metavar="FILE", help="write the result as JSON")
    parser.add_argument("--markdown", metavar="FILE", help="write the tables as markdown")


# ---- the lab ----------------------------------------------------------------------------

def docker_host():
    """The lab engine's DOCKER_HOST (lab/engine.sh ensure starts it if needed)."""
    done = subprocess.run([os.path.join(ROOT, "lab", "engine.sh"), "ensure"],
                          capture_output=True, text=True, check=False, timeout=300)
    if done.returncode != 0 or not done.stdout.strip():
        sys.exit("bench: lab/engine.sh ensure failed:\n%s" % done.stderr)
    return done.stdout.strip().splitlines()[-1]


def lab_py(action, host, timeout=600):
    return subprocess.run([sys.executable, os.path.join(ROOT, "lab", "lab.py"), action,
                           "--hosts", host], capture_output=True, text=True, check=False,
                          timeout=timeout)


@contextlib.contextmanager
def lab_host(name):
    """Lab host ``name`` fresh for this benchmark, removed afterwards.

    GPUFLEET_BENCH_LAB_KEEP=1 leaves it up (and reuses one that is up already).
    """
    os.environ["DOCKER_HOST"] = docker_host()
    keep = os.environ.get("GPUFLEET_BENCH_LAB_KEEP") == "1"
    if not keep:
        lab_py("down", name)
    done = lab_py("up", name)
    if done.returncode != 0:
        sys.exit("bench: lab.py up --hosts %s failed:\n%s\n%s" % (name, done.stdout, done.stderr))
    try:
        yield name
    finally:
        if not keep:
            lab_py("down", name)


def host_sh(host, script, *, check=True, timeout=600, input_text=None):
    """Run a bash script inside lab host ``host`` (docker exec)."""
    done = subprocess.run(["docker", "exec", "-i", host, "bash", "-c", script],
                          input=input_text, capture_output=True, text=True, check=False,
                          timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError("%s: %s failed (rc %d):\n%s%s"
                           % (host, script[:200], done.returncode, done.stdout, done.stderr))
    return done
