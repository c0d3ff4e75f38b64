# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quadlet container units from a services plan (module_utils/_quadlet.py)."""

from __future__ import annotations

import configparser

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _quadlet
from tests.support.plans import gpu, make_plan


def units_of(plan, **options):
    return {u["service"]: u for u in _quadlet.container_units(plan, **options)}


def keys(text, section):
    """Every KEY=value of a section, in order (a key may repeat)."""
    out, current = [], None
    for line in text.splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif current == section and "=" in line:
            out.append(tuple(line.split("=", 1)))
    return out


def test_every_active_service_gets_a_container_on_the_shared_network():
    plan = make_plan("dual-gpu", "vllm")
    units = units_of(plan)
    assert sorted(units) == sorted(plan["active"])
    for name, unit in units.items():
        assert unit["file"] == "gpufleet-%s.container" % name
        assert unit["unit"] == "gpufleet-%s.service" % name
        container = dict(keys(unit["text"], "Container"))
        assert container["ContainerName"] == "gpufleet-%s" % name
        assert container["Network"] == "gpufleet.network"
        assert container["NetworkAlias"] == name
        assert container["Pull"] == "never"
        assert container["NoNewPrivileges"] == "true"
        assert dict(keys(unit["text"], "Install")) == {"WantedBy": "multi-user.target"}
        # systemd reads the file as an ordinary unit file
        parser = configparser.ConfigParser(strict=False, interpolation=None)
        parser.read_string(unit["text"])
        assert parser.sections() == ["Unit", "Container", "Service", "Install"]


def test_gpus_are_cdi_devices_by_the_placements_ids_and_no_cuda_visible_devices():
    plan = make_plan("dual-gpu", "vllm")
    units = units_of(plan)
    by_service = {s["name"]: s for s in plan["services"]}
    for name, unit in units.items():
        devices = [v for k, v in keys(unit["text"], "Container") if k == "AddDevice"]
        where = by_service[name]["placement"]
        if where is None:
            assert devices == [], name
        else:
            assert devices == ["nvidia.com/gpu=%s" % d for d in where["device_ids"]], name
        assert not [line for line in unit["env_lines"] if line.startswith("CUDA_VISIBLE")]
    assert [v for k, v in keys(units["vllm"]["text"], "Container") if k == "AddDevice"] == [
        "nvidia.com/gpu=GPU-0001"]


def test_amd_services_get_device_nodes_and_the_vendors_variable():
    plan = make_plan("dual-gpu", "ollama", gpus=[gpu(0, vendor="amd"), gpu(1, vendor="amd")])
    unit = units_of(plan)["ollama"]
    assert [v for k, v in keys(unit["text"], "Container") if k == "AddDevice"] == [
        "/dev/kfd", "/dev/dri"]
    where = next(s for s in plan["services"] if s["name"] == "ollama")["placement"]
    assert where["environment"]["ROCR_VISIBLE_DEVICES"] == "GPU-0000"
    assert "ROCR_VISIBLE_DEVICES=GPU-0000" in unit["env_lines"]


def test_environment_goes_to_podmans_env_file_ports_and_volumes_as_compose_has_them():
    plan = make_plan("dual-gpu", "vllm")
    units = units_of(plan, env_dir="/etc/gpufleet/podman")
    ollama = units["ollama"]
    container = keys(ollama["text"], "Container")
    assert ("EnvironmentFile", "/etc/gpufleet/podman/ollama.env") in container
    assert ("PublishPort", "127.0.0.1:11434:11434/tcp") in container
    assert ("Volume", "/srv/test/models:/root/.ollama") in container
    assert "DEFAULT_OLLAMA_MODEL=llama3.2:3b" in ollama["env_lines"]
    assert any(line.startswith("OLLAMA_GPU_OVERHEAD=") for line in ollama["env_lines"])
    vllm = dict(keys(units["vllm"]["text"], "Container"))
    assert vllm["Exec"].startswith('"--model" "Qwen/Qwen2.5-1.5B-Instruct" "--port" "8000" '
                                   '"--gpu-memory-utilization" "0.')


def test_a_bind_address_and_ipv6_ports():
    def change(catalog):
        catalog["ollama"]["ports"][0]["address"] = "::1"
    units = units_of(make_plan("dual-gpu", "ollama", change=change), bind_address="0.0.0.0")
    assert ("PublishPort", "[::1]:11434:11434/tcp") in keys(units["ollama"]["text"], "Container")
    assert ("PublishPort", "0.0.0.0:8002:11434/tcp") in keys(units["vision"]["text"],
                                                             "Container")


def test_command_words_are_quoted_with_percent_and_dollar_doubled():
    def change(catalog):
        catalog["docling"]["command"] = ["serve", 'my "model" 100% $HOME\\x']
    docling = dict(keys(units_of(make_plan("dual-gpu", "vllm", change=change))["docling"]
                        ["text"], "Container"))
    assert docling["Exec"] == '"serve" "my \\"model\\" 100%% $$HOME\\\\x"'


def test_entrypoint_is_a_json_array_as_quadlet_takes_it():
    def change(catalog):
        catalog["docling"]["entrypoint"] = ["/bin/sh", "-c", "exec serve $X 5%"]
    docling = dict(keys(units_of(make_plan("dual-gpu", "ollama", change=change))["docling"]
                        ["text"], "Container"))
    assert docling["Entrypoint"] == '["/bin/sh", "-c", "exec serve $$X 5%%"]'


def test_secret_environment_gets_its_own_file():
    plan = make_plan("dual-gpu", "vllm")
    for service in plan["services"]:
        service["secret_environment"] = ["HF_TOKEN"] if service["name"] == "vllm" else []
    vllm = units_of(plan)["vllm"]
    assert vllm["secret_env_file"] == "/etc/gpufleet/podman/secrets/vllm.env"
    assert ("EnvironmentFile", vllm["secret_env_file"]) in keys(vllm["text"], "Container")
    assert units_of(plan)["ollama"]["secret_env_file"] is None


def test_a_service_named_network_would_take_the_networks_unit():
    def rename(catalog):
        catalog["network"] = catalog.pop("docling")
    with pytest.raises(ValueError) as exc:
        _quadlet.container_units(make_plan("dual-gpu", "vllm", change=rename))
    assert str(exc.value) == (
        "services_catalog.network: Quadlet names the network's unit gpufleet-network.service, "
        "which the container of a service named 'network' would take too; rename the service")


def test_images_are_named_in_full_as_docker_reads_them():
    plan = make_plan("dual-gpu", "vllm", change=lambda c: (
        c["ollama"].update(image="ollama/ollama:0.6.2"),
        c["vllm"].update(image="registry.lab:5000/vllm/vllm-openai:v0.9.1")))
    images = {name: dict(keys(unit["text"], "Container"))["Image"]
              for name, unit in units_of(plan).items()}
    assert images["ollama"] == "docker.io/ollama/ollama:0.6.2"
    assert images["vllm"] == "registry.lab:5000/vllm/vllm-openai:v0.9.1"


@pytest.mark.parametrize("change,message", [
    (lambda c: c["ollama"]["environment"].update(BAD="a\nb"),
     "services_catalog.ollama.environment.BAD must be one line (Podman's environment file has "
     "no quoting); got: 'a\\nb'"),
    (lambda c: c["docling"].update(command=["x\ny"]),
     "services_catalog.docling.command must not hold control characters (a newline would end the "
     "unit line); got: 'x\\ny'"),
])
def test_bad_values_name_the_field(change, message):
    with pytest.raises(ValueError) as exc:
        _quadlet.container_units(make_plan("dual-gpu", "vllm", change=change))
    assert str(exc.value) == message


@pytest.mark.parametrize("option,value,message", [
    ("env_dir", "relative/dir", "env_dir must be an absolute path"),
    ("env_dir", "/etc/with space", "env_dir must be an absolute path"),
    ("bind_address", "localhost", "bind_address"),
])
def test_bad_options_name_the_option(option, value, message):
    with pytest.raises(ValueError) as exc:
        _quadlet.container_units(make_plan("dual-gpu", "vllm"), **{option: value})
    assert message in str(exc.value) and repr(value) in str(exc.value)


def test_same_plan_same_text_and_the_network_unit():
    plan = make_plan("dual-gpu", "mixed")
    assert _quadlet.container_units(plan) == _quadlet.container_units(plan)
    assert _quadlet.network_unit() == "[Network]\nNetworkName=gpufleet\n"
