# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: one HTTP request to a local engine.

Not a public API: the leading underscore says so. The modules that talk to inference servers
(service_verify, engine_sleep, engine_handover) share it; their logic gets it injected as
``http(method, url, body, timeout) -> (status or None, text)``.
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
