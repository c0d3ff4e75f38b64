# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Bad input, table-driven: every user-facing field with a wrong type, a value out of range, an
unknown key or choice, a duplicate, a collision or a malformed name fails in the pure
validation (plugins/module_utils) with a message naming the field and the value.

Each case is ``(id, call, message)``: ``call`` runs the validation the role, module or filter
runs, and ``message`` is the exact text (field and value) the error must contain. The same
checks through the real entry points (ansible-playbook, the roles' preflight tasks, the
modules) are in tests/integration/test_bad_input_playbooks.py.
"""

from __future__ import annotations

import copy
import pathlib

import pytest
import yaml

from ansible_collections.gpufleet.inference.plugins.module_utils import (
    _common,
    _drain,
    _leaving,
    _placement,
    _plan,
    _preflight,
    _render,
    _router,
    _vram,
)

REPO = pathlib.Path(__file__).resolve().parents[2]
MODELS = "/srv/test/models"
SECRET = "sk-planted-bad-input-0c1d2e"


def _defaults(role):
    text = (REPO / "roles" / role / "defaults/main.yml").read_text()
    return yaml.safe_load(text.replace("{{ services_models_dir }}", MODELS))


SERVICES = _defaults("services")
CATALOG = SERVICES["services_catalog"]
EXTRA = SERVICES["services_extra_profiles"]


def gpu(index, total=24576):
    return {"index": index, "uuid": "GPU-%04d" % index, "name": "GPU%d" % index,
            "vendor": "nvidia", "memory_total_mib": total, "memory_used_mib": 0,
            "memory_free_mib": total, "compute_capability": "8.6", "processes": [],
            "mig_devices": [], "healthy": True}


GPUS = [gpu(0), gpu(1)]


def catalog(*changes):
    """The default catalog with ``(path, value)`` changes; value None deletes the key."""
    result = copy.deepcopy(CATALOG)
    for path, value in changes:
        target = result
        for key in path[:-1]:
            target = target[key]
        if value is None:
            del target[path[-1]]
        else:
            target[path[-1]] = value
    return result


def check_catalog(*changes):
    return lambda: _plan.check_catalog(catalog(*changes), EXTRA)


def plan(profile="dual-gpu", mode="mixed"):
    services = _plan.placement_input(CATALOG, profile, mode, EXTRA, GPUS)
    return _plan.plan(CATALOG, _placement.place(GPUS, services), GPUS, profile, mode, EXTRA)


def place(services=None, gpus=None, **options):
    services = [{"name": "llm", "vram_mib": 4096}] if services is None else services
    return lambda: _placement.place(GPUS if gpus is None else gpus, services, **options)


def router(**options):
    return lambda: _router.router_config(plan(), None, options)


def preflight(**options):
    return lambda: _preflight.check_options(options)


def drain(**kwargs):
    return lambda: _drain.wait_drained(lambda: [gpu(0)], lambda: 0.0, lambda s: None, **kwargs)


CASES = [
    # ---- services role: services_catalog (check_catalog, what services_plan runs) --------
    ("catalog-not-a-dict", lambda: _plan.check_catalog(["ollama"], EXTRA),
     "services_catalog must be a non-empty dict of service name: definition; got: ['ollama']"),
    ("catalog-unknown-key", check_catalog((["vllm", "imgae"], "x")),
     "services_catalog.vllm has unknown key(s): imgae"),
    ("catalog-unknown-engine", check_catalog((["vllm", "engine"], "tgi")),
     "services_catalog.vllm.engine must be one of ollama, vllm, other; got: 'tgi'"),
    ("catalog-image-upper-case", check_catalog((["ollama", "image"], "Ollama/Ollama:latest")),
     "services_catalog.ollama.image must be an image reference like ollama/ollama:latest "
     "(repository in lower case); got: 'Ollama/Ollama:latest'"),
    ("catalog-image-with-space", check_catalog((["vision", "image"], "gpufleet/vision latest")),
     "services_catalog.vision.image must be an image reference like ollama/ollama:latest "
     "(repository in lower case); got: 'gpufleet/vision latest'"),
    ("catalog-model-with-space", check_catalog((["ollama", "model"], "llama 3:8b")),
     "services_catalog.ollama.model must be a model name like llama3.2:3b or "
     "Qwen/Qwen2.5-1.5B-Instruct (letters, digits and . _ : / @ + -, no spaces); "
     "got: 'llama 3:8b'"),
    ("catalog-model-shell", check_catalog((["vllm", "model"], "Qwen/x;reboot")),
     "services_catalog.vllm.model must be a model name like llama3.2:3b or "
     "Qwen/Qwen2.5-1.5B-Instruct (letters, digits and . _ : / @ + -, no spaces); "
     "got: 'Qwen/x;reboot'"),
    # A trailing newline is not the end of a name: checks match to the end of the text.
    ("catalog-model-trailing-newline", check_catalog((["vllm", "model"], "Qwen/x\n")),
     "services_catalog.vllm.model must be a model name like llama3.2:3b or "
     "Qwen/Qwen2.5-1.5B-Instruct (letters, digits and . _ : / @ + -, no spaces); "
     "got: 'Qwen/x\\n'"),
    ("catalog-env-name-trailing-newline",
     check_catalog((["vllm", "environment"], {"HF_HOME\n": "x"})),
     "services_catalog.vllm.environment has a bad variable name; got: 'HF_HOME\\n'"),
    ("catalog-model-wrong-type", check_catalog((["ollama", "model"], 3)),
     "services_catalog.ollama.model must be a non-empty string; got: 3"),
    ("catalog-port-out-of-range", check_catalog((["vllm", "ports"], [70000])),
     "services_catalog.vllm.ports[0] must be 1-65535; got: 70000"),
    ("catalog-port-zero", check_catalog((["vllm", "ports"], [{"host": 0, "container": 8000}])),
     "services_catalog.vllm.ports[0].host must be 1-65535; got: 0"),
    ("catalog-port-wrong-type", check_catalog((["docling", "ports"], ["5001"])),
     "services_catalog.docling.ports[0] must be 1-65535; got: '5001'"),
    ("catalog-port-unknown-protocol",
     check_catalog((["docling", "ports"], [{"container": 5001, "protocol": "sctp"}])),
     "services_catalog.docling.ports[0].protocol must be one of tcp, udp; got: 'sctp'"),
    ("catalog-port-unknown-key",
     check_catalog((["docling", "ports"], [{"container": 5001, "bind": "0.0.0.0"}])),
     "services_catalog.docling.ports[0] has unknown key(s): bind"),
    ("catalog-port-address-not-an-ip",
     check_catalog((["ollama", "ports"], [{"container": 11434, "address": "localhost"}])),
     "services_catalog.ollama.ports[0].address must be an IP address to listen on (127.0.0.1 "
     "for this host only, 0.0.0.0 for every interface); got: 'localhost'"),
    ("catalog-port-collision",
     check_catalog((["vision", "ports"], [{"host": 11434, "container": 11434}])),
     "services_catalog.vision.ports[0] publishes host port 11434, as "
     "services_catalog.ollama.ports[0] does (both run in profile single-gpu); got: 11434"),
    ("catalog-vram-negative", check_catalog((["finetune", "vram_mib"], -5)),
     "services_catalog.finetune.vram_mib must be an integer > 0; got: -5"),
    ("catalog-vram-absurd", check_catalog((["finetune", "vram_mib"], 10 ** 9)),
     "services_catalog.finetune.vram_mib must be at most 2097152; got: 1000000000"),
    ("catalog-budget-wrong-type", check_catalog((["vllm", "vram_budget_mib"], "10G")),
     "services_catalog.vllm.vram_budget_mib must be an integer > 0; got: '10G'"),
    ("catalog-context-absurd", check_catalog((["vllm", "context_length"], 10 ** 12)),
     "services_catalog.vllm.context_length must be at most 16777216; got: 1000000000000"),
    ("catalog-parallel-zero", check_catalog((["vllm", "parallel"], 0)),
     "services_catalog.vllm.parallel must be an integer > 0; got: 0"),
    ("catalog-pin-negative", check_catalog((["ollama", "gpu"], -1)),
     "services_catalog.ollama.gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: -1"),
    ("catalog-pin-boolean", check_catalog((["ollama", "gpu"], True)),
     "services_catalog.ollama.gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: True"),
    ("catalog-unknown-profile", check_catalog((["docling", "profiles"], ["gpu"])),
     "services_catalog.docling.profiles[0] must be one of remote, cpu, single-gpu, dual-gpu, "
     "multi-gpu, finetune (or a key of services_extra_profiles); got: 'gpu'"),
    ("catalog-unknown-mode", check_catalog((["vllm", "modes"], ["vllm", "hybrid"])),
     "services_catalog.vllm.modes[1] must be one of ollama, vllm, mixed; got: 'hybrid'"),
    ("catalog-unknown-restart", check_catalog((["finetune", "restart"], "sometimes")),
     "services_catalog.finetune.restart must be one of no, always, on-failure, unless-stopped; "
     "got: 'sometimes'"),
    ("catalog-bad-service-name", lambda: _plan.check_catalog(
        dict(catalog(), **{"Ollama Main": CATALOG["docling"]}), EXTRA),
     "services_catalog has a bad service name (lower case letters, digits, '_' and '-', at "
     "most 52); got: 'Ollama Main'"),
    ("catalog-duplicate-service-name", lambda: _plan.check_catalog(
        dict(catalog(), **{"ollama-research": CATALOG["docling"]}), EXTRA),
     "services_catalog.ollama-research has the same Kubernetes name (ollama-research) as "
     "services_catalog.ollama_research; got: 'ollama-research'"),
    ("catalog-enabled-wrong-type", check_catalog((["docling", "enabled"], "yes")),
     "services_catalog.docling.enabled must be a boolean; got: 'yes'"),
    ("catalog-bad-env-name", check_catalog((["vllm", "environment"], {"HF-TOKEN": "x"})),
     "services_catalog.vllm.environment has a bad variable name; got: 'HF-TOKEN'"),
    ("catalog-relative-volume", check_catalog(
        (["ollama", "volumes"], [{"source": "models", "target": "/root/.ollama"}])),
     "services_catalog.ollama.volumes[0].source must be an absolute host path; got: 'models'"),
    ("catalog-health-port-unknown",
     check_catalog((["vllm", "health"], {"path": "/health", "port": 9000})),
     "services_catalog.vllm.health.port must be one of the service's container ports (8000); "
     "got: 9000"),
    ("services-profile-unknown",
     lambda: _plan.placement_input(CATALOG, "quad-gpu", "ollama", EXTRA, GPUS),
     "services_profile must be one of auto, remote, cpu, single-gpu, dual-gpu, multi-gpu; "
     "got: 'quad-gpu'"),
    ("services-mode-unknown",
     lambda: _plan.plan(CATALOG, None, GPUS, "dual-gpu", "hybrid", EXTRA),
     "services_mode must be one of ollama, vllm, mixed; got: 'hybrid'"),
    ("services-extra-profile-reserved",
     lambda: _plan.check_catalog(CATALOG, {"finetune": False, "cpu": True}),
     "services_extra_profiles has a bad profile name (lower case, digits and '-', not one of "
     "remote, cpu, single-gpu, dual-gpu, multi-gpu nor dual-gpu-* nor multi-gpu-*); got: 'cpu'"),
    ("services-extra-profile-wrong-type",
     lambda: _plan.check_catalog(CATALOG, {"finetune": "on"}),
     "services_extra_profiles.finetune must be a boolean; got: 'on'"),
    # ---- renderers: systemd_units_*, compose_* ------------------------------------------
    ("systemd-bind-address-malformed",
     lambda: _render.systemd_instances(plan(), MODELS, "0.0.0.0.0"),
     "systemd_units_bind_address must be an IP address to listen on (127.0.0.1 for this host "
     "only, 0.0.0.0 for every interface); got: '0.0.0.0.0'"),
    ("systemd-models-dir-relative", lambda: _render.systemd_instances(plan(), "models"),
     "systemd_units_models_dir must be an absolute path; got: 'models'"),
    ("compose-project-name", lambda: _render.compose_document(plan(), "base", "My Project"),
     "compose_project_name must be a compose project name (lower case letters, digits, '_' "
     "and '-'); got: 'My Project'"),
    ("compose-env-bad-key", lambda: _common.dotenv_merge("", {"MY-KEY": "x"}),
     "owned has a bad variable name; got: 'MY-KEY'"),
    # ---- gpu_placement (module and filters) ---------------------------------------------
    ("placement-unknown-strategy", place(strategy="fastest"),
     "strategy must be one of manual, vram_based, latency_optimized, isolation_first, "
     "balanced; got: 'fastest'"),
    ("placement-duplicate-service", place([{"name": "llm", "vram_mib": 1},
                                           {"name": "llm", "vram_mib": 2}]),
     "services[1].name duplicates services[0]; got: 'llm'"),
    ("placement-pin-to-missing-gpu",
     place([{"name": "llm", "vram_mib": 1}, {"name": "big", "vram_mib": 1, "gpu": 7}],
           pin_not_found="fail"),
     "services[1].gpu names a GPU this host does not have (GPUs: 0, 1); got: 7"),
    ("placement-pin-to-missing-uuid",
     place([{"name": "llm", "vram_mib": 1, "gpu": "GPU-dead"}], pin_not_found="fail"),
     "services[0].gpu names a GPU this host does not have (GPUs: 0, 1); got: 'GPU-dead'"),
    ("placement-unknown-pin-option", place(pin_not_found="maybe"),
     "pin_not_found must be one of warn, fail; got: 'maybe'"),
    ("placement-headroom-negative", place(headroom_mib=-1),
     "headroom_mib must be an integer >= 0; got: -1"),
    ("placement-headroom-absurd", place(headroom_mib=2 ** 40),
     "headroom_mib must be at most 2097152; got: 1099511627776"),
    ("placement-vram-absurd", place([{"name": "llm", "vram_mib": 3 * 2 ** 21}]),
     "services[0].vram_mib must be at most 2097152; got: 6291456"),
    ("placement-vram-negative", place([{"name": "llm", "vram_mib": -4096}]),
     "services[0].vram_mib must be > 0; got: -4096"),
    ("placement-model-malformed", place([{"name": "llm", "model": "qwen2.5 7b"}]),
     "services[0].model must be a model name like llama3.2:3b or Qwen/Qwen2.5-1.5B-Instruct "
     "(letters, digits and . _ : / @ + -, no spaces); got: 'qwen2.5 7b'"),
    ("placement-unknown-service-key", place([{"name": "llm", "vram": 4096}]),
     "services[0] has unknown key(s): vram"),
    ("placement-unknown-engine", place([{"name": "llm", "vram_mib": 1, "engine": "tgi"}]),
     "services[0].engine must be one of ollama, vllm, other; got: 'tgi'"),
    ("placement-bad-compute-capability",
     place([{"name": "llm", "vram_mib": 1, "min_compute_capability": "eight"}]),
     "services[0].min_compute_capability must look like '8.0'; got: 'eight'"),
    ("placement-duplicate-gpu-index", place(gpus=[gpu(0), gpu(0)]),
     "gpus[1].index duplicates gpus[0]; got: 0"),
    ("placement-negative-gpu-memory", place(gpus=[dict(gpu(0), memory_total_mib=-1)]),
     "gpus[0].memory_total_mib must be an integer >= 0 or null; got: -1"),
    ("placement-unknown-visible-devices", place(visible_devices_by="serial"),
     "visible_devices_by must be one of uuid, index; got: 'serial'"),
    ("placement-catalog-name-malformed",
     place(catalog=[{"name": "my model", "vram_mib": 1000}]),
     "catalog[0].name must be a model name like llama3.2:3b or Qwen/Qwen2.5-1.5B-Instruct "
     "(letters, digits and . _ : / @ + -, no spaces); got: 'my model'"),
    ("placement-catalog-unknown-quantization",
     place(catalog=[{"name": "m:7b", "params_b": 7, "quantization": "q9"}]),
     "catalog[0].quantization must be one of"),
    ("placement-catalog-weights-absurd",
     place(catalog=[{"name": "m:7b", "weights_mib": 10 ** 8}]),
     "catalog[0].weights_mib must be at most 2097152; got: 100000000"),
    ("placement-unknown-model-no-size", lambda: _vram.estimate("mystery-model", engine="vllm",
                                                               what="services[0].model"),
     "services[0].model is not in the model catalog and its name carries no parameter count "
     "(like ':7b'); add it with the catalog option or give vram_mib; got: 'mystery-model'"),
    # ---- router_* -------------------------------------------------------------------------
    ("router-unknown-routing", router(routing="mesh"),
     "router_routing must be one of docker, host; got: 'mesh'"),
    ("router-host-address-bad-ip", router(host_address="999.1.1.1"),
     "router_host_address must be a host name or IPv4 address; got: '999.1.1.1'"),
    ("router-host-address-bad-name", router(host_address="gpu_box!"),
     "router_host_address must be a host name or IPv4 address; got: 'gpu_box!'"),
    ("router-gateway-leading-dash", router(docker_host_gateway="-gateway"),
     "router_docker_host_gateway must be a host name or IPv4 address; got: '-gateway'"),
    ("router-base-url-bad-port",
     router(extra_backends={"cloud": {"base_url": "https://api.example.com:99999/v1"}}),
     "router_extra_backends.cloud.base_url must be an http(s) URL with a valid host and port; "
     "got: 'https://api.example.com:99999/v1'"),
    ("router-base-url-bad-host",
     router(extra_backends={"cloud": {"base_url": "http://api_example.com/v1"}}),
     "router_extra_backends.cloud.base_url must be an http(s) URL with a valid host and port; "
     "got: 'http://api_example.com/v1'"),
    ("router-base-url-scheme",
     router(extra_backends={"cloud": {"base_url": "ftp://files.example.com"}}),
     "router_extra_backends.cloud.base_url must be an http(s) URL; "
     "got: 'ftp://files.example.com'"),
    ("router-extra-unknown-key",
     router(extra_backends={"cloud": {"base_url": "https://x.example", "key": "k"}}),
     "router_extra_backends.cloud has unknown key(s): key"),
    ("router-extra-model-malformed",
     router(extra_backends={"cloud": {"base_url": "https://x.example", "model": "gpt 4"}}),
     "router_extra_backends.cloud.model must be a model name like llama3.2:3b or "
     "Qwen/Qwen2.5-1.5B-Instruct (letters, digits and . _ : / @ + -, no spaces); "
     "got: 'gpt 4'"),
    ("router-unknown-unreachable", router(unreachable="drop"),
     "router_unreachable must be one of omit, last; got: 'drop'"),
    ("router-unknown-task-class", router(task_routes={"trivial": "small"}),
     "router_task_routes has an unknown class (simple, moderate, complex); got: 'trivial'"),
    ("router-unknown-task-size", router(task_routes={"simple": "tiny"}),
     "router_task_routes.simple must be one of small, large; got: 'tiny'"),
    ("router-duplicate-fallback", router(fallback_order=["ollama", "ollama"]),
     "router_fallback_order lists a name twice; got: ['ollama', 'ollama']"),
    ("router-fallback-unknown-backend", router(fallback_order=["ollama", "gpt4"]),
     "router_fallback_order names no service, alias or extra backend"),
    ("router-cooldown-negative", router(cooldown_time=-5),
     "router_cooldown_time must be an integer >= 0; got: -5"),
    ("router-key-for-unknown-backend", router(keyed=["openai"]),
     "router_api_keys has a key for no backend"),
    # ---- preflight_* ----------------------------------------------------------------------
    ("preflight-size-table-gone", preflight(size_table=[{"name": "x", "kind": "image",
                                                         "size_mb": 5}]),
     "options has unknown key(s): size_table"),
    ("preflight-dirs-gone", preflight(dirs={"images": "/var/lib/docker"}),
     "options has unknown key(s): dirs"),
    ("preflight-download-kind-unknown",
     lambda: _preflight.check_options({}, {"download_kinds": ["image", "model"]}),
     "preflight_download_kinds[1] must be one of image, ollama, huggingface; got: 'model'"),
    ("preflight-downloads-not-a-result",
     lambda: _preflight.download_table({"downloads": [{"kind": "image", "name": "a:1",
                                                       "bytes": -5}]}),
     "downloads.downloads[0].bytes must be an integer >= 0; got: -5"),
    ("preflight-unknown-warn-only", preflight(warn_only=["gpu"]),
     "preflight_warn_only[0] must be one of ports, disk, driver, toolkit, runtime, gpu_memory, "
     "persistence; got: 'gpu'"),
    ("preflight-reserve-negative", preflight(disk_reserve_mib=-1),
     "preflight_disk_reserve_mib must be an integer >= 0; got: -1"),
    ("preflight-remote-wrong-type", preflight(remote="no"),
     "preflight_remote must be a boolean; got: 'no'"),
    ("preflight-unknown-mode-default",
     lambda: _preflight.dual_gpu_mode_plan(2, "", default="hybrid"),
     "preflight_dual_gpu_mode_default must be one of ollama, vllm, mixed; got: 'hybrid'"),
    ("preflight-env-mode-unknown",
     lambda: _preflight.dual_gpu_mode_plan(2, "DUAL_GPU_MODE=both\n"),
     ".env DUAL_GPU_MODE must be one of ollama, vllm, mixed; got: 'both'"),
    ("preflight-facts-port-zero", lambda: _preflight.check_facts_options([8000, 0], [], 10),
     "ports[1] must be 1-65535; got: 0"),
    ("preflight-facts-path-relative",
     lambda: _preflight.check_facts_options([], ["var/lib/docker"], 10),
     "paths[0] must be an absolute path; got: 'var/lib/docker'"),
    # Other scripts' digits are no number, though str.isdigit() and int() take them.
    ("preflight-timeout-arabic-digits",
     lambda: _preflight.check_options({}, {"nvidia_smi_timeout": "\u0666\u0660"}),
     "preflight_nvidia_smi_timeout must be 1-3600 seconds; got: '\u0666\u0660'"),
    ("router-probe-timeout-fullwidth-digits",
     lambda: _router.check_role(plan(), None, {}, {}, {"probe_timeout": "\uff15"}),
     "router_probe_timeout must be an integer >= 1; got: '\uff15'"),
    ("drain-targets-pid-fullwidth-digits",
     lambda: _leaving.drain_targets([], ["\uff11\uff12"]),
     "pids[0] must be a process id; got: '\uff11\uff12'"),
    ("preflight-facts-timeout-absurd", lambda: _preflight.check_facts_options([], [], 86400),
     "nvidia_smi_timeout must be 1-3600 seconds; got: 86400"),
    # ---- gpu_drain_wait -------------------------------------------------------------------
    ("drain-stable-beyond-timeout", drain(stable_s=30, timeout_s=10),
     "stable must not exceed timeout (10), or memory can never count as stable; got: 30"),
    ("drain-timeout-absurd", drain(timeout_s=10 ** 6),
     "timeout must be at most 86400; got: 1000000"),
    ("drain-interval-beyond-timeout", drain(interval_s=60, timeout_s=10, stable_s=1),
     "interval must not exceed timeout (10); got: 60"),
    ("drain-gpu-malformed", drain(gpus=["0", "first"]),
     "gpus[1] must be a GPU index or UUID (GPU-..., MIG-...); got: 'first'"),
    ("drain-pid-negative", drain(pids=[-3]), "pids[0] must be a positive integer; got: -3"),
    ("drain-gpu-missing", drain(gpus=["3"]), "gpus names GPUs this host does not have: 3"),
]


def test_the_table_is_large_and_its_ids_unique():
    ids = [case[0] for case in CASES]
    assert len(ids) >= 40 and len(set(ids)) == len(ids)


@pytest.mark.parametrize("call, message", [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
def test_bad_input_fails_naming_field_and_value(call, message):
    with pytest.raises(ValueError) as error:
        call()
    assert message in str(error.value)


@pytest.mark.parametrize("keys", [
    {"vllm": SECRET + "\n"},
    {"vllm": ""},
    {"vllm": 12345},
])
def test_bad_api_key_fails_without_showing_it(keys):
    config = _router.router_config(plan(), None, {"keyed": ["vllm"]})
    with pytest.raises(ValueError) as error:
        _router.apply_api_keys(config, keys)
    text = str(error.value)
    assert text.startswith("router_api_keys.vllm must be") and "(value hidden)" in text
    assert SECRET not in text and "12345" not in text


def test_good_input_passes_every_check():
    """The defaults pass each check above: a failing case fails for its one bad field."""
    assert _plan.check_catalog(CATALOG, EXTRA)
    assert _render.systemd_instances(plan(), MODELS, "127.0.0.1")
    assert _router.router_config(plan(), None, {"extra_backends": {
        "cloud": {"base_url": "https://api.example.com:8443/v1", "model": "gpt-4o-mini"}}})
    assert _preflight.check_options({}) is True
    assert _plan.check_modes(SERVICES["services_modes"],
                             _plan.check_catalog(CATALOG, EXTRA))["chat"]["exclusive"]
    assert place(pin_not_found="fail")()["summary"]
    assert drain(gpus=["0"], stable_s=0, timeout_s=1)()["drained"]
