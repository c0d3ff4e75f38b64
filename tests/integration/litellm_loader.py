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
"""

from __future__ import annotations

import json
import subprocess
import sys

_CHILD = r"""
import copy, json, sys
import yaml
import litellm
from litellm.proxy._types import ConfigYAML

with open(sys.argv[1]) as handle:
    config = yaml.safe_load(handle)
ConfigYAML(**copy.deepcopy(config))
settings = config.get("router_settings") or {}
valid = set(litellm.Router.get_valid_args()) - {"model_list", "search_tools"}
unknown = sorted(set(settings) - valid)
if unknown:
    raise SystemExit("router_settings keys the Router does not take: %s" % unknown)
router = litellm.Router(model_list=config["model_list"], **settings)
json.dump({
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
}, sys.stdout)
"""


def load_litellm_config(path, environ=None):
    """Return what LiteLLM's Router made of the config at ``path`` (raises on failure)."""
    env = {"LITELLM_LOCAL_MODEL_COST_MAP": "True", "LITELLM_LOG": "ERROR",
           "PATH": "/usr/bin:/bin", "HOME": "/nonexistent", "NO_PROXY": "*"}
    env.update(environ or {})
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                          text=True, check=False, env=env, timeout=300)
    if proc.returncode != 0:
        raise AssertionError("LiteLLM could not load %s:\n%s" % (path, proc.stderr[-4000:]))
    return json.loads(proc.stdout)


def read_env_file(path):
    """``NAME=value`` lines of an env file (comments skipped)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, value = line.split("=", 1)
            values[name] = value
    return values
