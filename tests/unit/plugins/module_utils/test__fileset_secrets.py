# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The secret path of project_files: each service's secret environment in a mode 0600 file
(compose ``env_file:``, systemd ``EnvironmentFile=``), never in another file, the result, the
diff or the plan (which carries the names only)."""

from __future__ import annotations

import copy
import json
import os
import pathlib
import stat

import pytest
from ansible.module_utils.common.yaml import yaml_dump, yaml_load

from ansible_collections.gpufleet.inference.plugins.module_utils import _common, _fileset, _plan
from ansible_collections.gpufleet.inference.plugins.module_utils._placement import place
from tests.support.plans import MODELS, TWO_GPUS, default_catalog

SECRETS = {"vllm": {"API_KEY": "sk-ab$cd #tail", "MULTI": "line1\nline2\n"},
           "ollama": {"OLLAMA_TOKEN": "100%-s3cr3t"}}
VALUES = ["sk-ab$cd", "line1", "line2", "s3cr3t"]


def secret_plan(secrets, mode="mixed"):
    catalog, extra = default_catalog()
    names = _plan.check_secret_environment(secrets, catalog)
    services = _plan.placement_input(catalog, "dual-gpu", mode, extra, TWO_GPUS)
    return _plan.plan(catalog, place(TWO_GPUS, services), TWO_GPUS, "dual-gpu", mode, extra,
                      None, names)


def options(tmp_path, runtime, secrets):
    if runtime == "compose":
        opts = {"project_dir": str(tmp_path / "project")}
    else:
        opts = {"units_dir": str(tmp_path / "units"), "env_dir": str(tmp_path / "env"),
                "models_dir": MODELS}
    opts["secret_env"] = copy.deepcopy(secrets)
    return opts


def present(runtime, plan, opts, check_mode=False):
    return _fileset.present(runtime, plan, opts, check_mode=check_mode, yaml_dump=yaml_dump,
                            yaml_load=yaml_load)


def mode_of(path):
    return stat.S_IMODE(os.stat(path).st_mode)


SECRET_FILE = {"compose": "project/secrets/%s.env", "systemd": "env/secrets/%s.env"}


def test_plan_carries_the_names_only():
    plan = secret_plan(SECRETS)
    services = {s["name"]: s for s in plan["services"]}
    assert services["vllm"]["secret_environment"] == ["API_KEY", "MULTI"]
    assert services["ollama"]["secret_environment"] == ["OLLAMA_TOKEN"]
    assert services["vision"]["secret_environment"] == []
    text = json.dumps(plan)
    assert not [v for v in VALUES if v in text]


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_secret_file_is_0600_and_the_only_place_of_the_values(tmp_path, runtime):
    plan = secret_plan(SECRETS)
    opts = options(tmp_path, runtime, SECRETS)
    result = present(runtime, plan, opts)
    assert result["changed"]
    for service in SECRETS:
        path = tmp_path / (SECRET_FILE[runtime] % service)
        assert mode_of(path) == 0o600
        assert mode_of(path.parent) == 0o700
    others = [p for p in tmp_path.rglob("*") if p.is_file() and "/secrets/" not in str(p)
              and _fileset.SNAPSHOT_NAME not in str(p)]
    assert others
    for path in others:
        assert not [v for v in VALUES if v in path.read_text()], path
    shown = json.dumps(result)
    assert not [v for v in VALUES if v in shown]
    assert "API_KEY" in shown  # the diff names what is there, without its value
    # Read back as each runtime reads it.
    text = (tmp_path / (SECRET_FILE[runtime] % "vllm")).read_text()
    if runtime == "compose":
        assert _common.dotenv_get(text, "API_KEY") == "sk-ab$cd #tail"
        assert _common.dotenv_get(text, "MULTI") == "line1\nline2\n"
    else:
        assert 'API_KEY="sk-ab\\$cd #tail"\n' in text
    again = present(runtime, plan, opts)
    assert again["changed"] is False


def test_compose_service_reads_its_file_by_env_file(tmp_path):
    plan = secret_plan(SECRETS)
    present("compose", plan, options(tmp_path, "compose", SECRETS))
    doc = yaml_load((tmp_path / "project/compose.yml").read_text())
    assert doc["services"]["vllm"]["env_file"] == ["secrets/vllm.env"]
    assert doc["services"]["ollama"]["env_file"] == ["secrets/ollama.env"]
    assert "env_file" not in doc["services"]["vision"]


@pytest.mark.parametrize("runtime, what", [("compose", "services_changed"),
                                           ("systemd", "restart")])
def test_a_changed_value_restarts_its_service_and_shows_no_value(tmp_path, runtime, what):
    plan = secret_plan(SECRETS)
    present(runtime, plan, options(tmp_path, runtime, SECRETS))
    changed = copy.deepcopy(SECRETS)
    changed["vllm"]["API_KEY"] = "sk-new$value"
    result = present(runtime, plan, options(tmp_path, runtime, changed))
    assert result["changed"]
    assert [f["state"] for f in result["files"]
            if f["path"].endswith("secrets/vllm.env")] == ["changed"]
    assert ("vllm" if runtime == "compose" else "vllm@vllm.service") in result[what]
    shown = json.dumps(result)
    assert "sk-new" not in shown and "sk-ab" not in shown


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_a_service_without_secrets_any_more_loses_its_file(tmp_path, runtime):
    present(runtime, secret_plan(SECRETS), options(tmp_path, runtime, SECRETS))
    fewer = {"vllm": SECRETS["vllm"]}
    result = present(runtime, secret_plan(fewer), options(tmp_path, runtime, fewer))
    assert not (tmp_path / (SECRET_FILE[runtime] % "ollama")).exists()
    assert (tmp_path / (SECRET_FILE[runtime] % "vllm")).exists()
    assert [f["state"] for f in result["files"]
            if f["path"].endswith("secrets/ollama.env")] == ["removed"]


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
def test_restored_puts_the_secret_file_back(tmp_path, runtime):
    plan = secret_plan(SECRETS)
    present(runtime, plan, options(tmp_path, runtime, SECRETS))
    path = tmp_path / (SECRET_FILE[runtime] % "vllm")
    before = path.read_bytes()
    changed = copy.deepcopy(SECRETS)
    changed["vllm"]["API_KEY"] = "other"
    present(runtime, plan, options(tmp_path, runtime, changed))
    assert path.read_bytes() != before
    result = _fileset.restored(runtime, options(tmp_path, runtime, {}), yaml_load=yaml_load)
    assert path.read_bytes() == before and mode_of(path) == 0o600
    assert not [v for v in [*VALUES, "other"] if v in json.dumps(result)]


@pytest.mark.parametrize("secrets, message", [
    ("x", "services_secret_environment must be a dict of service: {NAME: value}; got: a str"),
    ({"nope": {"A": "1"}}, "services_secret_environment has a service not in services_catalog "
                           "(ollama, vision, ollama_research, vllm, ollama_spare, docling, "
                           "finetune); "
                           "got: 'nope'"),
    ({"vllm": ["A"]}, "services_secret_environment.vllm must be a dict of NAME: value; "
                      "got: a list"),
    ({"vllm": {"BAD-NAME": "1"}},
     "services_secret_environment.vllm has a bad variable name; got: 'BAD-NAME'"),
    ({"vllm": {"A": None}},
     "services_secret_environment.vllm.A must be a string, number or boolean; got: a NoneType"),
    ({"vllm": {"A": "x\x00y"}},
     "services_secret_environment.vllm.A must not hold a NUL character (value not shown)"),
    ({"ollama": {"OLLAMA_MODELS": "/x"}},
     "services_secret_environment.ollama.OLLAMA_MODELS is set in "
     "services_catalog.ollama.environment too; set it in one place; got: 'OLLAMA_MODELS'"),
])
def test_bad_secret_environment_names_it(secrets, message):
    catalog, _extra = default_catalog()
    with pytest.raises(ValueError) as err:
        _plan.check_secret_environment(secrets, catalog)
    assert str(err.value) == message


def test_a_name_the_placement_sets_is_refused():
    with pytest.raises(ValueError) as err:
        secret_plan({"vllm": {"HF_HUB_OFFLINE": "0"}})
    assert str(err.value) == (
        "services_secret_environment.vllm.HF_HUB_OFFLINE is set by the plan too (the catalog's "
        "environment, its sources or the placement); set it in one place; got: 'HF_HUB_OFFLINE'")


def test_a_name_the_systemd_instance_sets_is_refused(tmp_path):
    secrets = {"vllm": {"VLLM_PORT": "1"}}
    with pytest.raises(ValueError) as err:
        present("systemd", secret_plan(secrets), options(tmp_path, "systemd", secrets))
    assert str(err.value) == ("services_secret_environment.vllm.VLLM_PORT is set by the vllm "
                              "instance file too; set it in one place; got: 'VLLM_PORT'")


@pytest.mark.parametrize("runtime", ["compose", "systemd"])
@pytest.mark.parametrize("secrets, message", [
    ({"vllm": {"API_KEY": "x"}}, "secret_env.vllm has no value for MULTI (the plan lists "
                                 "API_KEY, MULTI); got names: API_KEY"),
    (dict(SECRETS, vision={"A": "1"}), "secret_env has a service whose plan lists no secret "
                                       "environment; got: 'vision'"),
    ({"vllm": dict(SECRETS["vllm"], EXTRA="1"), "ollama": SECRETS["ollama"]},
     "secret_env.vllm has names the plan does not list (API_KEY, MULTI); got names: API_KEY, "
     "MULTI, EXTRA"),
    ({"vllm": "x"}, "secret_env.vllm must be a dict of NAME: value; got: a str"),
])
def test_secret_env_must_match_the_plan(tmp_path, runtime, secrets, message):
    opts = options(tmp_path, runtime, secrets)
    if secrets.get("ollama") is None and "vision" not in secrets:
        opts["secret_env"]["ollama"] = SECRETS["ollama"]
    with pytest.raises(ValueError) as err:
        present(runtime, secret_plan(SECRETS), opts)
    assert str(err.value) == message
    assert not pathlib.Path(tmp_path).joinpath("project").exists()
