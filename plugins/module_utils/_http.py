# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: one HTTP request to a local engine.

Not a public API: the leading underscore says so. The modules that talk to inference servers
(service_verify, engine_sleep, engine_handover, http_probe) share it; their logic gets it
injected as ``http(method, url, body, timeout) -> (status or None, text)``.
"""

from __future__ import annotations

import json
from urllib.error import HTTPError, URLError

from ansible.module_utils.common.text.converters import to_text
from ansible.module_utils.urls import open_url

# Bytes of an answer read at most (an engine's error page or JSON answer is far smaller).
MAX_BODY = 1 << 20


def request(method, url, body, timeout):
    """(status, text) of one request, a JSON ``body`` when given; (None, reason) when the
    server cannot be reached. An HTTP error status is an answer, not an exception."""
    data = None if body is None else json.dumps(body)
    headers = {"Content-Type": "application/json"} if data else None
    try:
        answer = open_url(url, method=method, data=data, headers=headers, timeout=timeout,
                          validate_certs=True)
        return answer.getcode(), to_text(answer.read(MAX_BODY), errors="surrogate_or_replace")
    except HTTPError as exc:
        try:
            text = to_text(exc.read(MAX_BODY), errors="surrogate_or_replace")
        except Exception:  # the answer's body may be gone already
            text = ""
        return exc.code, text or str(exc.reason)
    except (URLError, OSError, ValueError) as exc:
        return None, str(getattr(exc, "reason", exc))


def probe(requests, timeout, http=None):
    """One answer per request of ``requests`` ([{url, method, body}]), in order:
    ``{url, method, item, status, msg}`` (``item``: the request as given, as a loop's result
    has it) plus ``json`` when the answer parses as JSON (else ``content``). ``status`` is -1
    when the server cannot be reached (``msg`` says why), as ansible.builtin.uri says it.
    Every request is checked before the first is sent."""
    http = http or request
    if not isinstance(requests, list):
        raise ValueError("requests must be a list; got: %r" % (requests,))
    calls = []
    for i, req in enumerate(requests):
        if not isinstance(req, dict) or not isinstance(req.get("url"), str) or not req["url"]:
            raise ValueError("requests[%d].url must be a URL; got: %r" % (i, req))
        if not req["url"].startswith(("http://", "https://")):
            raise ValueError("requests[%d].url must start with http:// or https://; got: %r"
                             % (i, req["url"]))
        method = req.get("method") or "GET"
        if method not in ("GET", "POST", "HEAD"):
            raise ValueError("requests[%d].method must be GET, POST or HEAD; got: %r"
                             % (i, method))
        calls.append((req, method))
    out = []
    for req, method in calls:
        status, text = http(method, req["url"], req.get("body"), timeout)
        answer = {"url": req["url"], "method": method, "item": req}
        if status is None:
            answer.update(status=-1, msg="Request failed: %s" % text)
        else:
            answer.update(status=status, msg="HTTP %d (%d bytes)" % (status, len(text)))
            try:
                answer["json"] = json.loads(text)
            except ValueError:
                answer["content"] = text[:4096]
        out.append(answer)
    return out
