# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""service_verify: a long health wait shows what the late service answers while it waits; the
registered result is the module's own.

A real ansible-playbook run on localhost: a loopback HTTP server answers 503 until the run
has printed its first progress line, then 200; a stand-in ``docker`` on PATH shows the
service's running container. Without progress lines the run waits its whole timeout and
fails.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading

from .conftest import BIN, REPO, ansible_env

CONTAINER = {"Id": "a" * 64, "Name": "/pg-web-1", "RestartCount": 0,
             "State": {"Status": "running", "Running": True, "ExitCode": 0},
             "Config": {"Labels": {"com.docker.compose.project": "pg",
                                   "com.docker.compose.service": "web"}},
             "HostConfig": {"DeviceRequests": None}}

DOCKER = """#!/bin/sh
case "$1" in
  ps) echo %s ;;
  inspect) cat <<'JSON'
%s
JSON
  ;;
  *) echo "unexpected: $*" >&2; exit 1 ;;
esac
""" % ("a" * 64, json.dumps([CONTAINER]))

PLAYBOOK = """\
- name: Verify
  hosts: localhost
  gather_facts: false
  tasks:
    - name: Verify the web service
      gpufleet.inference.service_verify:
        runtime: compose
        services:
          - name: web
            url: http://127.0.0.1:{port}/health
            project: pg
            service: web
        timeout: 60
        gpu_check: false
      register: verified
    - name: Keep the registered result
      ansible.builtin.copy:
        content: "{{{{ verified | to_json }}}}"
        dest: {result}
        mode: "0600"
"""


class Service(http.server.BaseHTTPRequestHandler):
    ready = threading.Event()

    def do_GET(self):
        body = b"" if self.ready.is_set() else b'{"error": "loading"}'
        self.send_response(200 if self.ready.is_set() else 503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args):
        pass


def test_a_long_health_wait_shows_the_late_answer_then_that_it_answered(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "docker").write_text(DOCKER)
    (bin_dir / "docker").chmod(0o755)
    server = http.server.HTTPServer(("127.0.0.1", 0), Service)
    Service.ready.clear()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    playbook = tmp_path / "verify.yml"
    playbook.write_text(PLAYBOOK.format(port=server.server_port, result=tmp_path / "result.json"))
    env = ansible_env(PATH="%s%s%s" % (bin_dir, os.pathsep, os.environ["PATH"]))
    proc = subprocess.Popen([str(BIN / "ansible-playbook"), "-i",
                             str(REPO / "inventory/localhost.yml"), str(playbook)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, cwd=str(REPO))
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("localhost: web: /health 503 (loading), container running, "):
                assert line.rstrip().endswith(" s of 60 s"), line
                Service.ready.set()
        output = "".join(lines)
        assert proc.wait(timeout=120) == 0, output
    finally:
        server.shutdown()
    assert Service.ready.is_set(), output
    answered = [line for line in lines if line.startswith("localhost: web: /health 200 after ")]
    assert len(answered) == 1, output
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["services"][0]["healthy"] is True and result["problems"] == []
    assert result["crashed"] is None and result["changed"] is False
    assert not set(result) & {"ansible_job_id", "finished", "started", "results_file"}
