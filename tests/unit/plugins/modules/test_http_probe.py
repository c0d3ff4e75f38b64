# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The http_probe module run in-process against a real server on loopback: every request
answered in order in one run, any status an answer, a closed port status -1, bad input named."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from unittest import mock

import pytest

from ansible_collections.gpufleet.inference.plugins.modules import http_probe
from tests.support.modules import run_module


def run(args, check_mode=False):
    return run_module(http_probe.main, args, check_mode)


class Engine(BaseHTTPRequestHandler):
    """An engine's answers: JSON models, a 404, a 503 page, and an echo of a POST body."""

    def _send(self, status, body, kind="application/json"):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._send(200, json.dumps({"data": [{"id": "qwen"}]}))
        elif self.path == "/busy":
            self._send(503, "<html>busy</html>", "text/html")
        else:
            self._send(404, json.dumps({"error": "not found"}))

    def do_POST(self):
        length = int(self.headers["Content-Length"])
        self._send(200, json.dumps({"got": json.loads(self.rfile.read(length)),
                                    "type": self.headers["Content-Type"]}))

    def log_message(self, *args):
        pass


@pytest.fixture()
def engine():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Engine)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % server.server_address[1]
    server.shutdown()
    server.server_close()


def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("check_mode", [False, True])
def test_every_request_is_answered_in_order_and_nothing_changes(engine, check_mode):
    down = "http://127.0.0.1:%d/v1/models" % closed_port()
    requests = [
        {"url": engine + "/v1/models", "name": "vllm"},
        {"url": engine + "/nothing"},
        {"url": engine + "/busy", "method": "GET"},
        {"url": engine + "/api/generate", "method": "POST", "body": {"model": "m", "n": 1}},
        {"url": down},
    ]
    result = run({"requests": requests, "timeout": 3}, check_mode)
    assert result["changed"] is False and not result.get("failed"), result
    answers = result["results"]
    assert [a["status"] for a in answers] == [200, 404, 503, 200, -1]
    assert [a["item"] for a in answers] == requests  # each its request, as a loop gives it
    assert answers[0]["json"] == {"data": [{"id": "qwen"}]}
    assert answers[1]["json"] == {"error": "not found"}
    assert answers[2]["content"] == "<html>busy</html>" and "json" not in answers[2]
    assert answers[3]["json"] == {"got": {"model": "m", "n": 1}, "type": "application/json"}
    assert answers[4]["url"] == down and answers[4]["msg"].startswith("Request failed: ")
    assert "json" not in answers[4] and "content" not in answers[4]


def test_no_request_no_answer():
    assert run({"requests": []})["results"] == []


@pytest.mark.parametrize("requests, timeout, msg", [
    ([{"method": "GET"}], 5, "http_probe: requests[0].url must be a URL; got: {'method': 'GET'}"),
    ([{"url": "http://a/"}, {"url": "ftp://a/"}], 5,
     "http_probe: requests[1].url must start with http:// or https://; got: 'ftp://a/'"),
    ([{"url": "http://a/", "method": "DELETE"}], 5,
     "http_probe: requests[0].method must be GET, POST or HEAD; got: 'DELETE'"),
    ([{"url": "http://a/"}], 0, "http_probe: timeout must be 1 or more seconds; got: 0"),
])
def test_bad_input_is_named_before_any_request(requests, timeout, msg):
    with mock.patch.object(http_probe._http, "request") as request:
        result = run({"requests": requests, "timeout": timeout})
    assert result["failed"] and result["msg"] == msg, result
    request.assert_not_called()
