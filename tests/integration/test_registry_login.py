# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""compose_registry_logins against a real Docker engine and CLI (the lab's engine) and a
registry login stand-in on loopback (tests/support/registry_standin.py).

The compose role's login tasks (community.docker.docker_login) run by ansible-playbook on
localhost, with HOME in a temporary directory so that the CLI's ~/.docker/config.json is the
test's own: a first run logs in, a second changes nothing, a rotated password logs in again, a
refused one fails naming the registry and the user and keeps the stored credential; the
password is never in the output (-v --diff) and the CLI's file is 0600. The same holds with a
credential helper named by config.json's credsStore (a stand-in helper on PATH that keeps its
credentials in a file): the credential goes to the helper, config.json holds none.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import subprocess
import sys

import pytest
import yaml

from tests.support.registry_standin import RegistryStandIn

from .conftest import BIN, REPO, ansible_env
from .render_support import recap

USER = "gpufleet"
PASSWORD = "planted-registry-pass-3e9d1b7c"
ROTATED = "planted-registry-pass-rotated-8a2f"
WRONG = "planted-registry-pass-wrong-5c4b"
HELPER = "gpufleet-test"
# docker-credential-<name>: the credential helper protocol (get/store/erase/list on stdin).
HELPER_SCRIPT = """#!%s
import json, os, sys
path = os.environ["GPUFLEET_TEST_CREDS"]
held = json.load(open(path)) if os.path.exists(path) else {}
data = sys.stdin.read()
if sys.argv[1] == "store":
    entry = json.loads(data)
    held[entry["ServerURL"]] = {"Username": entry["Username"], "Secret": entry["Secret"]}
elif sys.argv[1] == "get":
    if data.strip() not in held:
        print("credentials not found in native keychain")
        sys.exit(1)
    print(json.dumps(dict(held[data.strip()], ServerURL=data.strip())))
elif sys.argv[1] == "erase":
    held.pop(data.strip(), None)
elif sys.argv[1] == "list":
    print(json.dumps({key: entry["Username"] for key, entry in held.items()}))
json.dump(held, open(path, "w"))
""" % sys.executable
PLAY = [{
    "name": "Log in to the registries",
    "hosts": "localhost",
    "gather_facts": False,
    "tasks": [{"name": "Run the compose role's login tasks",
               "ansible.builtin.include_role": {"name": "gpufleet.inference.compose",
                                                "tasks_from": "registry_login"}}],
}]


@pytest.fixture(scope="module")
def docker_host():
    proc = subprocess.run([str(REPO / "lab" / "engine.sh"), "ensure"], capture_output=True,
                          text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.fixture
def login(tmp_path, docker_host):
    home = tmp_path / "home"
    home.mkdir()
    helpers = tmp_path / "bin"
    helpers.mkdir()
    helper = helpers / ("docker-credential-" + HELPER)
    helper.write_text(HELPER_SCRIPT)
    helper.chmod(0o700)
    playbook = tmp_path / "login.yml"
    playbook.write_text(yaml.safe_dump(PLAY, sort_keys=False))

    def run(registry, password):
        secrets = tmp_path / "secrets.json"
        secrets.write_text(json.dumps({"compose_registry_logins": [
            {"registry": registry, "username": USER, "password": password}]}))
        secrets.chmod(0o600)
        env = ansible_env(HOME=str(home), DOCKER_HOST=docker_host,
                          ANSIBLE_STDOUT_CALLBACK="default",
                          GPUFLEET_TEST_CREDS=tmp_path / "helper-creds.json",
                          PATH="%s:%s" % (helpers, os.environ["PATH"]))
        env.pop("DOCKER_CONFIG", None)
        command = [str(BIN / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                   str(playbook), "-v", "--diff", "-e", "@%s" % secrets,
                   "-e", "ansible_python_interpreter=%s" % sys.executable]
        proc = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                              timeout=300, cwd=str(REPO))
        return proc.returncode, proc.stdout + proc.stderr

    return run, home / ".docker" / "config.json"


def in_helper(tmp_path, registry):
    return json.loads((tmp_path / "helper-creds.json").read_text())[registry]


def stored(config, registry):
    return json.loads(config.read_text())["auths"][registry]["auth"]


def auth(password):
    return base64.b64encode(("%s:%s" % (USER, password)).encode()).decode()


def test_login_once_then_unchanged_then_rotated(login):
    run, config = login
    with RegistryStandIn(USER, PASSWORD) as registry:
        rc, out = run(registry.address, PASSWORD)
        assert rc == 0, out
        assert recap(out)["localhost"]["changed"] == 1, out
        assert "ok" in registry.seen, registry.seen
        assert stored(config, registry.address) == auth(PASSWORD)
        assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
        assert PASSWORD not in out

        seen = len(registry.seen)
        rc, out = run(registry.address, PASSWORD)
        assert rc == 0 and recap(out)["localhost"]["changed"] == 0, out
        assert len(registry.seen) == seen, "a second run must not log in again"

        registry.credentials["password"] = ROTATED
        rc, out = run(registry.address, ROTATED)
        assert rc == 0 and recap(out)["localhost"]["changed"] == 1, out
        assert stored(config, registry.address) == auth(ROTATED)
        assert ROTATED not in out and PASSWORD not in out


def test_a_refused_login_fails_naming_the_registry_and_keeps_the_credential(login):
    run, config = login
    with RegistryStandIn(USER, PASSWORD) as registry:
        rc, out = run(registry.address, PASSWORD)
        assert rc == 0, out
        rc, out = run(registry.address, WRONG)
        assert rc != 0, out
        assert "Registry login failed: Logging into %s for user %s failed" % (
            registry.address, USER) in out, out
        assert "wrong" in registry.seen
        assert WRONG not in out and PASSWORD not in out
        assert stored(config, registry.address) == auth(PASSWORD)


def test_a_credential_helper_holds_the_login_and_a_second_run_changes_nothing(login, tmp_path):
    run, config = login
    config.parent.mkdir()
    config.write_text(json.dumps({"credsStore": HELPER}))
    config.chmod(0o600)
    with RegistryStandIn(USER, PASSWORD) as registry:
        rc, out = run(registry.address, PASSWORD)
        assert rc == 0 and recap(out)["localhost"]["changed"] == 1, out
        assert in_helper(tmp_path, registry.address) == {"Username": USER, "Secret": PASSWORD}
        assert "auth" not in json.loads(config.read_text()).get("auths", {}).get(
            registry.address, {})

        rc, out = run(registry.address, PASSWORD)
        assert rc == 0 and recap(out)["localhost"]["changed"] == 0, out

        registry.credentials["password"] = ROTATED
        rc, out = run(registry.address, ROTATED)
        assert rc == 0 and recap(out)["localhost"]["changed"] == 1, out
        assert in_helper(tmp_path, registry.address)["Secret"] == ROTATED

        rc, out = run(registry.address, WRONG)
        assert rc != 0, out
        assert "Registry login failed: Logging into %s for user %s failed" % (
            registry.address, USER) in out, out
        assert in_helper(tmp_path, registry.address)["Secret"] == ROTATED
        for secret in (PASSWORD, ROTATED, WRONG):
            assert secret not in out
