#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: service_wait
short_description: Wait until services are healthy, and fail at once when one's container exited
version_added: 0.1.0
description:
  - Asks each service's O(services[].url) every O(interval) seconds and returns as soon as every
    one answers HTTP 200.
  - With O(compose_project), also reads the state of each service's container in that compose
    project (C(docker ps -a), by the compose labels) and fails at once when one has exited, is
    being restarted by its restart policy, or is gone, with its exit code and last log lines.
    A plain endpoint poll cannot tell a vLLM that crashed in its memory profiling from one
    still loading, and would wait until the timeout before anything is rolled back.
  - Fails after O(timeout) seconds naming the services that did not answer and why.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  services:
    description: The services to wait for.
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The service's name; with O(compose_project), its compose service name.
        type: str
        required: true
      url:
        description: Its health endpoint, C(http://) or C(https://).
        type: str
        required: true
  compose_project:
    description:
      - Compose project whose containers to watch. Without it only the endpoints are asked.
    type: str
  timeout:
    description: Seconds to wait at most (more than 0).
    type: float
    default: 600.0
  interval:
    description: Seconds between two rounds (more than 0).
    type: float
    default: 2.0
  request_timeout:
    description: Seconds one health request may take.
    type: float
    default: 5.0
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details: Waiting changes nothing; in check mode the module waits as well.
  diff_mode:
    support: none
  idempotent:
    support: full
requirements:
  - The docker CLI on the host, with O(compose_project).
seealso:
  - module: gpufleet.inference.gpu_drain_wait
"""

EXAMPLES = r"""
- name: Wait for vLLM and Docling, failing at once if a container exits
  gpufleet.inference.service_wait:
    compose_project: gpufleet-modes
    services:
      - {name: vllm, url: "http://127.0.0.1:8000/health"}
      - {name: docling, url: "http://127.0.0.1:5001/health"}
    timeout: 600
"""

RETURN = r"""
waited_s:
  description: Seconds the wait took.
  returned: always
  type: float
  sample: 12.4
services:
  description:
    - Per service, C(healthy), C(seconds) until it answered, C(detail) of the last answer and
      C(state) of its container (with O(compose_project)).
  returned: always
  type: dict
crashed:
  description: The service whose container exited, or V(null).
  returned: always
  type: str
"""

import re
import time
from urllib.error import HTTPError, URLError

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.urls import open_url

from ansible_collections.gpufleet.inference.plugins.module_utils import _service_wait

_URL_RE = re.compile(r"^https?://[^/\s]+(/\S*)?$")
_PS_FORMAT = '{{.Label "com.docker.compose.service"}}\t{{.State}}\t{{.Status}}\t{{.ID}}'


def main():
    module = AnsibleModule(
        argument_spec=dict(
            services=dict(type="list", elements="dict", required=True, options=dict(
                name=dict(type="str", required=True),
                url=dict(type="str", required=True),
            )),
            compose_project=dict(type="str"),
            timeout=dict(type="float", default=600.0),
            interval=dict(type="float", default=2.0),
            request_timeout=dict(type="float", default=5.0),
        ),
        supports_check_mode=True,
    )
    p = module.params
    for key in ("timeout", "interval", "request_timeout"):
        if p[key] <= 0:
            module.fail_json(msg="%s must be more than 0 seconds; got: %s" % (key, p[key]))
    for index, service in enumerate(p["services"]):
        if not _URL_RE.match(service["url"]):
            module.fail_json(msg="services[%d].url must be an http(s) URL; got: %r"
                             % (index, service["url"]))

    def probe(url):
        try:
            response = open_url(url, method="GET", timeout=p["request_timeout"],
                                validate_certs=True)
            return response.getcode(), "HTTP %d" % response.getcode()
        except HTTPError as exc:
            return exc.code, "HTTP %d" % exc.code
        except (URLError, OSError, ValueError) as exc:
            return None, str(getattr(exc, "reason", exc))

    containers = logs = None
    if p["compose_project"]:
        docker = module.get_bin_path("docker", required=True)

        def containers():
            rc, out, err = module.run_command([
                docker, "ps", "--all", "--no-trunc", "--filter",
                "label=com.docker.compose.project=%s" % p["compose_project"],
                "--format", _PS_FORMAT])
            if rc != 0:
                module.fail_json(msg="docker ps failed (rc %d): %s" % (rc, (err or out).strip()))
            return _service_wait.parse_ps(out)

        def logs(container):
            _rc, out, err = module.run_command([docker, "logs", "--tail", "50", container])
            return (out or "") + (err or "")

    try:
        result = _service_wait.wait_healthy(
            p["services"], probe, containers, logs, time.monotonic, time.sleep,
            timeout_s=p["timeout"], interval_s=p["interval"])
    except ValueError as exc:
        module.fail_json(msg="service_wait: %s" % exc)
    out = dict(changed=False, waited_s=result["waited_s"], services=result["services"],
               crashed=result["crashed"])
    if not result["healthy"]:
        module.fail_json(msg=result["reason"], **out)
    module.exit_json(**out)


if __name__ == "__main__":
    main()
