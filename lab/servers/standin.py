# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared code of the lab's STAND-IN inference servers (stdlib only).

These are not Ollama, vLLM or Docling: they reproduce only the observable behaviour the
collection depends on (ports, endpoints, VRAM held on the GPUs they see, timings, the
failures of the seeds). See lab/README.md, "Stand-in servers".

Settings come from the environment, else from /etc/gpufleet-lab/standin.env (written by
lab/lab.py from the lab inventory), else from /run/nvidia-stand-in/standin.env (placed into
GPU containers by the stand-in hook), else from the defaults below.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CONFIG_FILES = ("/etc/gpufleet-lab/standin.env", "/run/nvidia-stand-in/standin.env")

DEFAULTS = {
    "GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS": "0.5",
    "GPUFLEET_STANDIN_OLLAMA_VERSION": "0.12.5",
    "GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS": "1.0",
    "GPUFLEET_STANDIN_VLLM_LOAD_SECONDS": "0.5",
    "GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS": "1.0",
    "GPUFLEET_STANDIN_VLLM_VERSION": "0.10.1",
    "GPUFLEET_STANDIN_SIDECAR_STARTUP_SECONDS": "0.3",
    "GPUFLEET_STANDIN_TOKEN_SECONDS": "0.0",
}

GIB = 1024.0


def _file_settings():
    values = {}
    for path in CONFIG_FILES:
        try:
            with open(path, encoding="utf-8") as handle:
                for raw in handle:
                    line = raw.strip()
                    if line and not line.startswith("#") and "=" in line:
                        key, _sep, value = line.partition("=")
                        values.setdefault(key.strip(), value.strip().strip('"'))
        except OSError:
            continue
    return values


_SETTINGS = None


def setting(name, default=None):
    global _SETTINGS  # noqa: PLW0603 - read once per process
    if name in os.environ:
        return os.environ[name]
    if _SETTINGS is None:
        _SETTINGS = _file_settings()
    if name in _SETTINGS:
        return _SETTINGS[name]
    return DEFAULTS.get(name, default)


# prctl(2) option that sets the calling thread's name, /proc/<pid>/comm (what ps, top and
# pstree show; setproctitle sets it too). The lab's NVML library reports it for a process that
# registered no name; the real driver reports argv[0] of /proc/<pid>/cmdline instead, which
# setproctitle also rewrites (lab/README.md, "What the driver shows of them").
PR_SET_NAME = 15
COMM_MAX = 15  # the kernel keeps 15 bytes (TASK_COMM_LEN 16, with the NUL)


def set_process_name(name):
    """Give this process the kernel name ``name`` (cut to 15 bytes by the kernel, as it cuts
    ``VLLM::EngineCore`` to ``VLLM::EngineCor``), like the real engines. Returns the name the
    kernel kept, or None when prctl is not there (not Linux)."""
    import ctypes  # noqa: PLC0415 - only here

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    if prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_NAME, %r) failed" % name)
    try:
        with open("/proc/self/comm", encoding="utf-8") as handle:
            return handle.read().rstrip("\n")
    except OSError:
        return name.encode()[:COMM_MAX].decode(errors="replace")


def hold_until_stdin_closes():
    """A child process's life: say ``ready`` to the parent, then wait until the parent closes
    our stdin (or stops us)."""
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass


def seconds(name):
    return float(setting(name, "0"))


def log(component, message, **fields):
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime())
    extra = "".join(' %s="%s"' % (k, v) for k, v in fields.items())
    sys.stderr.write(
        'time=%s level=INFO source=%s msg="%s"%s\n' % (stamp, component, message, extra)
    )
    sys.stderr.flush()


_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)")


def duration(value, default):
    """Ollama-style keep_alive: seconds as a number, or "5m", "1h30m", "-1", "0"."""
    if value is None or value == "":
        return default
    if isinstance(value, (int, float)):
        return float(value)
    text = str(value).strip()
    try:
        return float(text)
    except ValueError:
        pass
    total = 0.0
    parts = _DURATION.findall(text)
    if not parts:
        raise ValueError("time: invalid duration %r" % text)
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    for number, unit in parts:
        total += float(number) * factor[unit]
    return total


def parse_host_port(value, default_host, default_port):
    """OLLAMA_HOST-like: "0.0.0.0:11435", ":11435", "host", "http://host:port"."""
    if not value:
        return default_host, default_port
    text = value.split("://", 1)[-1].rstrip("/")
    if text.startswith("["):
        host, _sep, port = text[1:].partition("]:")
    elif ":" in text:
        host, _sep, port = text.rpartition(":")
    else:
        host, port = text, ""
    return host or default_host, int(port) if port else default_port


class JSONHandler(BaseHTTPRequestHandler):
    """Routes: self.routes = {("GET", "/path"): method}; JSON in, JSON out."""

    server_version = "standin"
    protocol_version = "HTTP/1.1"
    routes = {}
    component = "server"

    def log_message(self, fmt, *args):  # one line per request, like a real access log
        if os.environ.get("GPUFLEET_STANDIN_ACCESS_LOG", "0") == "1":
            log(self.component, fmt % args)

    def _body(self):
        length = int(self.headers.get("Content-Length") or 0)
        if not length:
            return {}
        raw = self.rfile.read(length)
        try:
            return json.loads(raw or b"{}")
        except ValueError:
            return None

    def send_json(self, code, payload, content_type="application/json"):
        data = json.dumps(payload).encode() if not isinstance(payload, bytes) else payload
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def send_text(self, code, text, content_type="text/plain; charset=utf-8"):
        self.send_json(code, text.encode(), content_type)

    def begin_stream(self, content_type="application/x-ndjson"):
        """Start a chunked 200 answer; then send_chunk() each line, end_stream() once."""
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def send_chunk(self, text):
        """One chunk, flushed at once (OSError when the client has gone)."""
        chunk = text.encode()
        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        self.wfile.flush()

    def end_stream(self):
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def stream_lines(self, lines, content_type="application/x-ndjson"):
        self.begin_stream(content_type)
        for line in lines:
            self.send_chunk(line)
        self.end_stream()

    def _dispatch(self, method):
        path = self.path.split("?", 1)[0]
        handler = self.routes.get((method, path))
        if handler is None and method == "HEAD":
            handler = self.routes.get(("GET", path))
        if handler is None:
            self.send_text(404, "404 page not found")
            return
        body = None
        if method in ("POST", "DELETE"):
            body = self._body()
            if body is None:
                self.send_json(400, {"error": "invalid JSON body"})
                return
        handler(self, body)

    def do_GET(self):
        self._dispatch("GET")

    def do_HEAD(self):
        self._dispatch("HEAD")

    def do_POST(self):
        self._dispatch("POST")

    def do_DELETE(self):
        self._dispatch("DELETE")


def serve(handler_cls, host, port, on_stop=None):
    """Serve until SIGTERM / SIGINT; on_stop() runs before exit (free VRAM, stop runners)."""
    httpd = ThreadingHTTPServer((host, port), handler_cls)
    httpd.daemon_threads = True

    def stop(signum, _frame):
        log(handler_cls.component, "shutting down", signal=signum)
        if on_stop:
            on_stop()
        threading.Thread(target=httpd.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log(handler_cls.component, "Listening on %s:%d" % (host, port))
    httpd.serve_forever(poll_interval=0.2)
    httpd.server_close()


def gpu_summary(gpus):
    return [
        {
            "index": g["index"],
            "uuid": g["uuid"],
            "name": g["name"],
            "total_mib": g["total_mib"],
            "free_mib": g["free_mib"],
        }
        for g in gpus
    ]
