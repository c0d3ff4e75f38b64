# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Load a LiteLLM proxy config with LiteLLM's own code, offline, in a child process.

What the proxy does with its config file (litellm/proxy/proxy_server.py, ProxyConfig.load_config):
read the YAML, keep the ``router_settings`` keys that ``litellm.Router.get_valid_args()`` names,
and build ``litellm.Router(model_list=..., **router_settings)``; the Router resolves
``os.environ/<VAR>`` references in ``litellm_params``. The proxy module itself needs the
``litellm[proxy]`` extras (a web stack, cloud SDKs); the config's schema, ``ConfigYAML`` of
``litellm.proxy._types``, and the Router are in plain ``litellm`` and are what validates.
Here the Router is built without ``ignore_invalid_deployments``, so a bad deployment fails.
One child process loads every config of a test process, each with its own environment.
"""

from __future__ import annotations

import atexit
import json
import subprocess
import sys
import tempfile

_CHILD = r"""
import copy, json, os, sys, traceback
import yaml
import litellm
from litellm.proxy._types import ConfigYAML

# One request per line on stdin, one answer per line on the original stdout; whatever LiteLLM
# prints goes to stderr.
answers = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)
base = dict(os.environ)


def load(path, environ):
    os.environ.clear()
    os.environ.update(base, **environ)
    with open(path) as handle:
        config = yaml.safe_load(handle)
    ConfigYAML(**copy.deepcopy(config))
    settings = config.get("router_settings") or {}
    valid = set(litellm.Router.get_valid_args()) - {"model_list", "search_tools"}
    unknown = sorted(set(settings) - valid)
    if unknown:
        raise ValueError("router_settings keys the Router does not take: %s" % unknown)
    router = litellm.Router(model_list=config["model_list"], **settings)
    return {
        "model_names": [d["model_name"] for d in router.model_list],
        "deployments": {d["model_name"]: {k: d["litellm_params"].get(k)
                                          for k in ("model", "api_base", "api_key")}
                        for d in router.model_list},
        "fallbacks": router.fallbacks or [],
        "cooldown_time": router.cooldown_time,
        "allowed_fails": router.allowed_fails,
        "num_retries": router.num_retries,
        "timeout": router.timeout,
        "litellm_settings": config.get("litellm_settings"),
    }


for line in sys.stdin:
    request = json.loads(line)
    try:
        answer = {"result": load(request["path"], request["environ"])}
    except Exception:
        answer = {"error": traceback.format_exc()}
    answers.write(json.dumps(answer) + "\n")
    answers.flush()
os._exit(0)
"""

# One child per test process: importing LiteLLM takes ~2.5 s of CPU, loading a config ~0.1 s.
_LOADER = {}


def _loader():
    child = _LOADER.get("child")
    if child is None or child.poll() is not None:
        env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
               "PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "NO_PROXY": "*"}
        stderr = tempfile.TemporaryFile(mode="w+")
        child = subprocess.Popen([sys.executable, "-c", _CHILD], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        _LOADER.update(child=child, stderr=stderr)
        atexit.register(_stop, child)
    return child


def _stop(child):
    if child.poll() is None:
        child.stdin.close()
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


def load_litellm_config(path, environ=None):
    """Return what LiteLLM's Router made of the config at ``path`` (raises on failure), with
    ``environ`` in the environment (the ``os.environ/<VAR>`` references)."""
    child = _loader()
    child.stdin.write(json.dumps({"path": str(path), "environ": environ or {}}) + "\n")
    child.stdin.flush()
    line = child.stdout.readline()
    if not line:
        stderr = _LOADER["stderr"]
        stderr.seek(0)
        raise AssertionError("the LiteLLM loader exited (rc %s):\n%s"
                             % (child.wait(), stderr.read()[-4000:]))
    answer = json.loads(line)
    if "error" in answer:
        raise AssertionError("LiteLLM could not load %s:\n%s" % (path, answer["error"][-4000:]))
    return answer["result"]


def read_env_file(path):
    """``NAME=value`` lines of an env file (comments skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value
    return values
