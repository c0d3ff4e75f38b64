# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input through the real entry points: the roles (argument specs and preflight tasks)
and the modules, run by ansible-playbook on localhost. Each must fail before anything changes,
with a message naming the field and the value.

To stay fast, ONE playbook tries every case: each case is a block whose rescue records
``ansible_failed_result.msg``; the last task writes the messages as JSON next to (not inside)
the project directory the roles point at. That directory holds a previous project (files,
a .env with a foreign key) and must be byte-identical afterwards. Every case is its own test.
Two control cases must pass, so the harness is seen to tell a pass from a failure.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from .conftest import BIN, REPO, ansible_env
from .render_support import DUAL_GPUS, tree

SECRET = "sk-planted-badinput-7a6b5c4d"
PASSED = "NO FAILURE"


def role(name, tasks_from=None, **variables):
    task = {"name": "Run the %s role" % name,
            "ansible.builtin.include_role": {"name": "gpufleet.inference.%s" % name}}
    if tasks_from:
        task["ansible.builtin.include_role"]["tasks_from"] = tasks_from
    if variables:
        task["vars"] = variables
    return task


def services(**variables):
    return role("services", **variables)


def module(name, **options):
    return {"name": "Run %s" % name, "gpufleet.inference.%s" % name: options}


def bad_catalog():
    catalog = yaml.safe_load((REPO / "roles/services/defaults/main.yml").read_text().replace(
        "{{ services_models_dir }}", "/srv/test/models"))["services_catalog"]
    catalog["vllm"]["ports"] = [70000]
    return catalog


VERIFY_VLLM = {"name": "vllm", "url": "http://127.0.0.1:8000/health", "project": "p",
               "service": "vllm"}

# (id, tasks, texts the recorded message must contain: the field and the value)
CASES = [
    # services: argument spec, then the catalog check of its preflight
    ("services-unknown-profile", [services(services_profile="quad-gpu")],
     ["services_profile", "quad-gpu"]),
    ("services-unknown-strategy", [services(services_placement_strategy="fastest")],
     ["services_placement_strategy", "fastest"]),
    # (a type the argument spec cannot convert: Ansible names the field and the type given)
    ("services-gpus-wrong-type", [services(services_gpus="two")],
     ["services_gpus", "is of type str"]),
    ("services-catalog-port-out-of-range", [services(services_catalog=bad_catalog())],
     ["services_catalog.vllm.ports[0] must be 1-65535; got: 70000"]),
    ("services-placement-options-unknown-key",
     [services(services_placement_options={"headroom": 512})],
     ["services_placement_options has unknown key(s):", "headroom"]),
    # compose
    ("compose-project-name", [role("compose", compose_project_name="My Project")],
     ["project_files: project_name must be a compose project name", "got: 'My Project'"]),
    ("compose-env-bad-key", [role("compose", compose_env={"MY-KEY": "x"})],
     ["project_files: env has a bad variable name; got: 'MY-KEY'"]),
    ("compose-verify-timeout-negative",
     [role("compose", compose_verify_timeout=-5)],
     ["compose_verify_timeout must be an integer >= 1; got: -5"]),
    ("compose-unknown-runtime", [role("compose", compose_runtime="lxc")],
     ["compose_runtime", "lxc"]),
    ("compose-registry-with-scheme", [role("compose", compose_registry_logins=[
        {"registry": "https://registry.example.com", "username": "ci", "password": SECRET}])],
     ["compose_registry_logins[0].registry must be a host name with an optional port",
      "got: https://registry.example.com"]),
    ("compose-registry-empty-user", [role("compose", compose_registry_logins=[
        {"registry": "registry.example.com:5000", "username": "", "password": SECRET}])],
     ["compose_registry_logins[0].username must not be empty"]),
    ("compose-registry-no-password", [role("compose", compose_registry_logins=[
        {"registry": "registry.example.com", "username": "ci"}])],
     ["missing required arguments: password", "compose_registry_logins"]),
    ("compose-registry-unknown-key", [role("compose", compose_registry_logins=[
        {"registry": "registry.example.com", "username": "ci", "password": SECRET,
         "email": "ci@example.com"}])],
     ["compose_registry_logins", "email"]),
    # systemd_units
    ("systemd-bind-address",
     [role("systemd_units", systemd_units_bind_address="0.0.0.0.0")],
     ["project_files: bind_address must be an IP address", "got: '0.0.0.0.0'"]),
    ("systemd-unknown-runtime", [role("systemd_units", systemd_units_runtime="docker")],
     ["systemd_units_runtime", "docker"]),
    ("systemd-user-name", [role("systemd_units", systemd_units_user="gpu fleet")],
     ["systemd_units_user must be an account or group name", "got: gpu fleet"]),
    ("systemd-relative-dir", [role("systemd_units", systemd_units_dir="units")],
     ["systemd_units_dir must be an absolute path; got: 'units'"]),
    # a path a unit carries: a newline would add a line to the unit (ExecStartPre=+ runs as
    # root), a space splits ExecStart=, systemd reads %, $, quotes, ';' and '\\' specially
    ("systemd-bin-newline", [role(
        "systemd_units", systemd_units_ollama_bin="/usr/local/bin/ollama\nExecStartPre=+/bin/id")],
     ["unit_paths_check: systemd_units_ollama_bin must be an absolute path without whitespace",
      "got: '/usr/local/bin/ollama\\nExecStartPre=+/bin/id' ('\\n' is not allowed)"]),
    ("systemd-bin-space", [role("systemd_units", systemd_units_vllm_bin="/opt/my vllm/bin/vllm")],
     ["systemd_units_vllm_bin must be an absolute path without whitespace",
      "got: '/opt/my vllm/bin/vllm' (' ' is not allowed)"]),
    ("systemd-env-dir-specifier", [role("systemd_units", systemd_units_env_dir="/etc/gpufleet/%i")],
     ["systemd_units_env_dir must be an absolute path", "got: '/etc/gpufleet/%i' ('%' is not "
      "allowed)"]),
    ("systemd-models-dir-semicolon",
     [role("systemd_units", systemd_units_models_dir="/srv/models;/bin/sh")],
     ["systemd_units_models_dir must be an absolute path", "got: '/srv/models;/bin/sh' (';' is "
      "not allowed)"]),
    # router
    ("router-host-address",
     [role("router", router_routing="host", router_host_address="999.1.1.1")],
     ["router_host_address must be a host name or IPv4 address; got: '999.1.1.1'"]),
    ("router-file-mode", [role("router", router_file_mode="0644")],
     ["router_file_mode", "0644"]),
    ("router-extra-backend-port", [role("router", router_extra_backends={
        "cloud": {"base_url": "https://api.example.com:99999/v1"}})],
     ["router_extra_backends.cloud.base_url must be an http(s) URL with a valid host and port",
      "got: 'https://api.example.com:99999/v1'"]),
    ("router-key-for-unknown-backend",
     [role("router", router_api_keys={"openai": SECRET})],
     ["router_api_keys has a key for no backend", "got: 'openai'"]),
    ("router-key-not-a-dict", [role("router", router_api_keys=SECRET)],
     ["router_api_keys"]),
    ("router-key-two-lines",
     [role("router", router_api_keys={"vllm": SECRET + "\nsecond"})],
     ["router_api_keys.vllm must be one non-empty line", "(value hidden)"]),
    # preflight
    ("preflight-unknown-warn-only", [role("preflight", preflight_warn_only=["gpu"])],
     ["preflight_warn_only", "gpu"]),
    ("preflight-unknown-download-kind",
     [role("preflight", preflight_download_kinds=["image", "model"])],
     ["preflight_download_kinds", "model"]),
    ("preflight-reserve-negative", [role("preflight", preflight_disk_reserve_mib=-1)],
     ["preflight_disk_reserve_mib must be an integer >= 0; got: -1"]),
    ("preflight-size-table-removed", [role("preflight", preflight_size_table=[
        {"name": "x", "kind": "image", "size_mb": 5, "dir": "images"}])],
     ["preflight_size_table and preflight_dirs were removed"]),
    # modes (the services role: the plan fails before anything is written)
    ("services-unknown-mode", [role("services", services_mode="gaming")],
     ["services_mode must be one of ollama, vllm, mixed, chat, ingestion; got: 'gaming'"]),
    ("services-mode-unknown-service", [role("services", services_mode="chat", services_modes={
        "chat": {"exclusive": True, "services": ["searx"]}})],
     ["services_modes.chat.services[0] names no enabled entry of services_catalog", "searx"]),
    # health and k8s_manifests
    ("health-unknown-runtime", [role("health", health_runtime="k8s")], ["health_runtime", "k8s"]),
    ("health-wait-not-a-number", [role("health", health_wait="soon")],
     ["health_wait", "unable to convert to float"]),
    # service_verify refuses these before it runs a command or asks an endpoint
    ("health-wait-zero", [role("health", health_wait=0)],
     ["service_verify: timeout must be more than 0 seconds and at most 86400; got: 0.0"]),
    ("health-gpu-not-a-device", [role("health", health_services=[
        {"name": "vllm", "engine": "vllm", "port": 8000, "gpu": True}])],
     ["health_verify_checks: services[0].gpu must be a GPU UUID, MIG UUID or index (or null); "
      "got: True"]),
    ("k8s-namespace", [role("k8s_manifests", k8s_manifests_namespace="Bad_NS")],
     ["k8s_manifests_namespace must be a DNS-1123 label; got: 'Bad_NS'"]),
    ("k8s-relative-dir", [role("k8s_manifests", k8s_manifests_dir="k8s")],
     ["k8s_manifest_files: k8s_manifests_dir must be an absolute path; got: 'k8s'"]),
    # the modules
    ("module-placement-pin-to-missing-gpu", [module(
        "gpu_placement", gpus=DUAL_GPUS, pin_not_found="fail",
        services=[{"name": "big", "vram_mib": 1024, "gpu": "7"}])],
     ["services[0].gpu names a GPU this host does not have (GPUs: 0, 1); got: '7'"]),
    ("module-placement-unknown-strategy", [module(
        "gpu_placement", gpus=DUAL_GPUS, strategy="fastest",
        services=[{"name": "llm", "vram_mib": 1024}])],
     ["strategy", "fastest"]),
    ("module-drain-stable-beyond-timeout", [module("gpu_drain_wait", stable=30, timeout=10)],
     ["stable must not exceed timeout (10.0), or memory can never count as stable; "
      "got: 30.0"]),
    ("module-drain-gpu-malformed", [module("gpu_drain_wait", gpus=["first"])],
     ["gpus[0] must be a GPU index or UUID (GPU-..., MIG-...); got: 'first'"]),
    ("module-preflight-facts-port", [module("preflight_facts", ports=[8000, 0])],
     ["ports[1] must be 1-65535; got: 0"]),
    ("module-service-verify-url", [module("service_verify", runtime="compose", services=[
        {"name": "vllm", "url": "127.0.0.1:8000/health", "project": "p", "service": "vllm"}])],
     ["services[0].url must be an http(s) URL; got: '127.0.0.1:8000/health'"]),
    ("module-service-verify-interval", [module("service_verify", runtime="compose", interval=0,
                                               services=[VERIFY_VLLM])],
     ["interval must be more than 0 seconds and at most 86400; got: 0.0"]),
    ("module-service-verify-duplicate", [module("service_verify", runtime="compose", timeout=1,
                                                services=[VERIFY_VLLM, VERIFY_VLLM])],
     ["services: each name once; got: vllm, vllm"]),
    ("module-service-verify-unit", [module("service_verify", runtime="systemd", services=[
        {"name": "vllm", "cuda_visible_devices": "-1"}])],
     ["services[0].unit is required with runtime systemd; got: None"]),
    ("module-gpu-facts-timeout", [module("gpu_facts", timeout=0)],
     ["timeout must be >= 1 second; got: 0"]),
    ("module-gpu-facts-backend", [module("gpu_facts", backend="cuda")], ["backend", "cuda"]),
    # controls: good input passes (the harness tells a pass from a failure)
    ("control-router-preflight-passes", [role("router", "preflight")], None),
    ("control-services-mode-passes", [role("services", services_mode="ingestion")], None),
]


# The failed task's message, and the messages of its failed loop items.
FAILED_MESSAGES = (
    "([ansible_failed_result.msg | default('?') | string]"
    " + (ansible_failed_result.results | default([]) | selectattr('failed', 'defined')"
    " | selectattr('failed') | map(attribute='msg') | map('string') | list)) | join(' | ')")


def case_block(name, tasks):
    note = "{{ _bad_input | combine({%r: %s}) }}"
    return {
        "name": "Case %s" % name,
        "block": [*tasks, {"name": "Note that it passed", "ansible.builtin.set_fact": {
            "_bad_input": note % (name, repr(PASSED))}}],
        "rescue": [{"name": "Note the failure", "ansible.builtin.set_fact": {
            "_bad_input": note % (name, FAILED_MESSAGES)}}],
    }


def previous_project(root):
    """What a host had before: files the roles would rewrite, and a foreign .env key."""
    files = {
        "compose/.env": "MY_TOKEN=keep\nDUAL_GPU_MODE=mixed\n",
        "compose/compose.yml": "# previous\nservices: {}\n",
        "units/ollama@.service": "# previous unit\n",
        "env/ollama.env": "OLLAMA_HOST=127.0.0.1:11434\n",
        "config/llm.yaml": "# previous\n",
        "modes/compose.yml": "# previous\n",
    }
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_input")
    project = tmp / "project"
    previous_project(project)
    before = tree(project)
    results = tmp / "results.json"
    play = {
        "name": "Try every bad input",
        "hosts": "localhost",
        "gather_facts": False,
        "vars": {
            "_bad_input": {},
            "services_gather_gpu_facts": False,
            "services_gpus": DUAL_GPUS,
            "services_dual_gpu_mode": "mixed",
            "services_env_file": str(project / "compose/.env"),
            "services_models_dir": str(tmp / "models"),
            "compose_project_dir": str(project / "compose"),
            "compose_apply": False,
            "systemd_units_dir": str(project / "units"),
            "systemd_units_env_dir": str(project / "env"),
            "systemd_units_prepare_host": False,
            "systemd_units_apply": False,
            "systemd_units_reload": False,
            "systemd_units_restart_changed": False,
            "systemd_units_ollama_bin": "/usr/local/bin/ollama",
            "systemd_units_vllm_bin": "/usr/local/bin/vllm",
            "router_config_dir": str(project / "config"),
            "router_app_env_file": str(project / "inference.env"),
            "router_probe": False,
            "preflight_env_file": str(project / "compose/.env"),
            "k8s_manifests_dir": str(project / "k8s"),
        },
        # The services role once, with good input: the renderers' cases read its plan.
        "tasks": [role("services"), *[case_block(name, tasks) for name, tasks, _texts in CASES],
                  {"name": "Write what each case said",
                   "ansible.builtin.copy": {"content": "{{ _bad_input | to_nice_json }}",
                                            "dest": str(results), "mode": "0600"}}],
    }
    playbook = tmp / "bad_input.yml"
    playbook.write_text(yaml.safe_dump([play], sort_keys=False, width=200))
    command = [str(BIN / "ansible-playbook"), "-i", str(REPO / "inventory/localhost.yml"),
               str(playbook), "-v", "-e", "ansible_python_interpreter=%s" % sys.executable]
    proc = subprocess.run(command, env=ansible_env(ANSIBLE_STDOUT_CALLBACK="default"),
                          capture_output=True, text=True, check=False, timeout=600,
                          cwd=str(REPO))
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and results.is_file(), output
    return {"results": json.loads(results.read_text()), "output": output,
            "before": before, "after": tree(project)}


def test_nothing_changed(ran):
    """No case wrote, removed or touched a file of the previous project (no backups either)."""
    assert ran["after"] == ran["before"]


def test_every_case_ran(ran):
    assert sorted(ran["results"]) == sorted(name for name, _tasks, _texts in CASES)
    assert len([case for case in CASES if case[2] is not None]) >= 10


def test_planted_key_never_shown(ran):
    assert SECRET not in ran["output"]
    assert all(SECRET not in message for message in ran["results"].values())


@pytest.mark.parametrize("name, texts", [(case[0], case[2]) for case in CASES],
                         ids=[case[0] for case in CASES])
def test_case(ran, name, texts):
    message = ran["results"][name]
    if texts is None:
        assert message == PASSED
    else:
        assert message != PASSED, "%s did not fail" % name
        for text in texts:
            assert text in message, message
