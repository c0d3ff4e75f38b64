#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: http_probe
short_description: Ask several HTTP endpoints from the host in one module run
version_added: 0.2.0
description:
  - Sends each request of O(requests) from the host, one after the other, and returns each
    answer's HTTP status and body in the same order. The inference servers listen on the
    host's loopback; a loop of M(ansible.builtin.uri) over them costs one module run (and one
    connection) per URL, this costs one for all.
  - Any HTTP status is an answer, not a failure; a server that cannot be reached answers
    status V(-1) with the reason in C(msg), as M(ansible.builtin.uri) reports it. The module
    fails only on bad input (naming the request and the value).
  - Reads only; it runs in check mode too and never reports a change.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  requests:
    description:
      - The requests, each C(url) (C(http://) or C(https://), required), C(method)
        (V(GET), V(POST) or V(HEAD), default V(GET)) and C(body) (sent as JSON when given).
      - Other keys are ignored, so the items of a list built for a loop can be passed as they
        are.
    type: list
    elements: dict
    required: true
  timeout:
    description: Seconds each request may take.
    type: int
    default: 5
extends_documentation_fragment:
  - gpufleet.inference.attributes
  - gpufleet.inference.attributes.INFO_MODULE
seealso:
  - module: ansible.builtin.uri
  - module: gpufleet.inference.service_verify
"""

EXAMPLES = r"""
- name: Ask the engines for their models
  gpufleet.inference.http_probe:
    requests:
      - url: http://127.0.0.1:11434/api/tags
      - url: http://127.0.0.1:8000/v1/models
    timeout: 3
  register: answers
"""

RETURN = r"""
results:
  description: One answer per request, in order.
  returned: always
  type: list
  elements: dict
  contains:
    url:
      description: The URL asked.
      type: str
    method:
      description: The method used.
      type: str
    status:
      description: The HTTP status; V(-1) when the server could not be reached.
      type: int
    msg:
      description: The status and size of the answer, or why there was none.
      type: str
    json:
      description: The answer's body, when it is JSON.
      type: raw
      returned: when the body parses as JSON
    content:
      description: The answer's body (its first 4096 characters), when it is not JSON.
      type: str
      returned: when the body does not parse as JSON
  sample:
    - url: http://127.0.0.1:11434/api/tags
      method: GET
      status: 200
      msg: HTTP 200 (25 bytes)
      json: {models: []}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _http


def main():
    module = AnsibleModule(
        argument_spec=dict(
            requests=dict(type="list", elements="dict", required=True),
            timeout=dict(type="int", default=5),
        ),
        supports_check_mode=True,
    )
    if module.params["timeout"] < 1:
        module.fail_json(msg="http_probe: timeout must be 1 or more seconds; got: %d"
                         % module.params["timeout"])
    try:
        results = _http.probe(module.params["requests"], module.params["timeout"])
    except ValueError as exc:
        module.fail_json(msg="http_probe: %s" % exc)
    module.exit_json(changed=False, results=results)


if __name__ == "__main__":
    main()
