# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A stand-in for the login check of a Docker registry, on loopback, for tests.

Not a registry: it serves no image. It answers the one call a login makes (for `docker login`
and the API's ``POST /auth`` alike, the engine asks ``GET /v2/`` of the registry) the way a
registry with HTTP basic auth does (the Distribution API's htpasswd mode): ``401`` with
``WWW-Authenticate: Basic realm=...`` without credentials or with wrong ones, ``200 {}`` with
the right ones, both with the ``Docker-Distribution-API-Version: registry/2.0`` header; any
other path is ``404``. Each request's outcome is recorded (``ok``, ``no-credentials``,
``wrong``), never the password.
The engine treats registries on 127.0.0.0/8 as insecure, so it speaks plain HTTP to it after
its TLS attempt fails.
"""

from __future__ import annotations

import base64
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class RegistryStandIn:
    def __init__(self, username, password):
        self.credentials = {"user": username, "password": password}
        self.seen = []
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *_args):
                pass

            def do_GET(self):
                if self.path.rstrip("/") != "/v2":
                    self.send_response(404)
                    self.end_headers()
                    return
                outcome = stand_in.judge(self.headers.get("Authorization"))
                stand_in.seen.append(outcome)
                self.send_response(200 if outcome == "ok" else 401)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Content-Type", "application/json")
                if outcome != "ok":
                    self.send_header("WWW-Authenticate", 'Basic realm="gpufleet-test-registry"')
                body = b"{}" if outcome == "ok" else (
                    b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}')
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.address = "127.0.0.1:%d" % self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def judge(self, header):
        if not header or not header.startswith("Basic "):
            return "no-credentials"
        try:
            user, _sep, password = base64.b64decode(header[6:]).decode().partition(":")
        except ValueError:
            return "wrong"
        good = (user, password) == (self.credentials["user"], self.credentials["password"])
        return "ok" if good else "wrong"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *_exc):
        self.server.shutdown()
        self.server.server_close()
