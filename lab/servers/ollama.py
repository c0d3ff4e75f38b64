# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for Ollama (not Ollama): `ollama serve` with the behaviour the collection needs.

* OLLAMA_HOST (default 127.0.0.1:11434), OLLAMA_MODELS, OLLAMA_KEEP_ALIVE (5m; -1 never),
  OLLAMA_MAX_LOADED_MODELS, OLLAMA_SCHED_SPREAD, OLLAMA_GPU_OVERHEAD (bytes);
* GET / ("Ollama is running"), /api/version, /api/tags, /api/ps (size, size_vram,
  expires_at), POST /api/generate, /api/chat, /api/pull, /api/show, /api/delete,
  /v1/models, /v1/chat/completions;
* a model loads on its first request (or a request without prompt: preload), taking
  GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS; each loaded model is a runner subprocess that holds
  its VRAM on the GPUs this server sees (CUDA_VISIBLE_DEVICES, the container's GPUs) and
  registers it with the simulated driver; keep_alive expiry or keep_alive 0 stops the runner
  and the driver frees its memory after its drain delay; the server and the runner take the
  kernel name "ollama" (the real runner is the ollama binary run as `ollama runner`), so a
  GPU process of this server is found by its cgroup, not by a name;
* no GPU seen: it says "no compatible GPUs were discovered" and "entering low vram mode"
  and runs models on CPU (size_vram 0): the failure of seed 004.
GET /api/standin (stand-in only) reports what it sees.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import gpuview
import standin

COMPONENT = "server.go"
MIB = 1024 * 1024
# Approximate on-disk size (MiB) of common models: what they hold in VRAM, plus the context.
CATALOGUE = {
    "tinyllama:latest": 638,
    "qwen2.5:0.5b": 398,
    "qwen2.5:1.5b": 986,
    "qwen2.5:3b": 1929,
    "qwen2.5:7b": 4683,
    "qwen2.5:14b": 9000,
    "llama3.2:1b": 1321,
    "llama3.2:3b": 2019,
    "llama3.1:8b": 4920,
    "mistral:7b": 4113,
    "gemma3:4b": 3338,
    "moondream:latest": 1738,
    "gpt-oss:20b": 13793,
    "qwen3-vl:32b": 21000,
    "nemotron-3-nano:128k": 24000,
}
CONTEXT_MIB = 300  # KV cache and graph of a default 4096-token context


def normalise(name):
    name = (name or "").strip()
    return name if ":" in name else name + ":latest"


def size_of(name):
    if name in CATALOGUE:
        return CATALOGUE[name]
    tag = name.split(":", 1)[1]
    digits = "".join(c for c in tag if c.isdigit() or c == ".")
    try:
        return int(float(digits) * 620) if tag.endswith("b") and digits else 2000
    except ValueError:
        return 2000


def digest(name):
    return hashlib.sha256(name.encode()).hexdigest()


def iso(ts):
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + ".%06dZ" % int((ts % 1) * 1e6)


def details(name):
    tag = name.split(":", 1)[1]
    return {
        "parent_model": "",
        "format": "gguf",
        "family": name.split(":")[0].rstrip("0123456789."),
        "families": [name.split(":")[0]],
        "parameter_size": tag.upper() if tag[-1:] == "b" else "",
        "quantization_level": "Q4_K_M",
    }


class Models:
    def __init__(self):
        self.lock = threading.RLock()
        self.loaded = {}  # name -> {...}
        self.models_dir = os.environ.get("OLLAMA_MODELS") or os.path.expanduser("~/.ollama/models")
        self.default_keep = standin.duration(os.environ.get("OLLAMA_KEEP_ALIVE"), 300.0)
        self.spread = os.environ.get("OLLAMA_SCHED_SPREAD", "") not in ("", "0", "false")
        self.overhead = int(os.environ.get("OLLAMA_GPU_OVERHEAD", "0") or 0) // MIB
        gpus = gpuview.visible_gpus()
        self.max_loaded = int(os.environ.get("OLLAMA_MAX_LOADED_MODELS") or 3 * max(1, len(gpus)))

    # --- the model store ---------------------------------------------------------------
    def _manifest(self, name):
        model, tag = name.split(":", 1)
        return os.path.join(
            self.models_dir, "manifests", "registry.ollama.ai", "library", model, tag
        )

    def pulled(self):
        names = set()
        preset = standin.setting(
            "GPUFLEET_STANDIN_OLLAMA_MODELS", "llama3.2:3b,qwen2.5:1.5b,qwen2.5:7b"
        )
        names.update(normalise(n) for n in preset.split(",") if n.strip())
        base = os.path.join(self.models_dir, "manifests", "registry.ollama.ai", "library")
        if os.path.isdir(base):
            for model in os.listdir(base):
                for tag in os.listdir(os.path.join(base, model)):
                    names.add("%s:%s" % (model, tag))
        return sorted(names)

    def pull(self, name):
        path = self._manifest(name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w", encoding="utf-8") as handle:
            json.dump({"schemaVersion": 2, "standin": True, "size_mib": size_of(name)}, handle)

    def delete(self, name):
        try:
            os.unlink(self._manifest(name))
            return True
        except OSError:
            return False

    # --- loading -------------------------------------------------------------------------
    def place(self, need):
        gpus = gpuview.visible_gpus()
        if not gpus:
            return {}
        gpus = sorted(gpus, key=lambda g: -g["free_mib"])
        usable = [(g, max(0, g["free_mib"] - self.overhead)) for g in gpus]
        if not self.spread:
            for gpu, free in usable:
                if free >= need:
                    return {gpu["index"]: need}
        vram, left = {}, need
        for gpu, free in usable:
            take = min(left, max(0, free - 256))
            if take > 0:
                vram[gpu["index"]] = take
                left -= take
            if left <= 0:
                break
        return vram  # partly on CPU when left > 0

    def load(self, name, keep_alive):
        with self.lock:
            entry = self.loaded.get(name)
            if entry is None:
                while len(self.loaded) >= self.max_loaded:
                    oldest = min(self.loaded, key=lambda n: self.loaded[n]["used_at"])
                    self._unload(oldest, "evicted to make room")
                need = size_of(name) + CONTEXT_MIB
                vram = self.place(need)
                spec = ",".join("%d=%d" % kv for kv in sorted(vram.items()))
                runner = subprocess.Popen(
                    [
                        sys.executable,
                        os.path.realpath(__file__),
                        "runner",
                        "--model",
                        name,
                        "--vram",
                        spec,
                    ],
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                runner.stdout.readline()  # "ready": registered with the driver
                time.sleep(standin.seconds("GPUFLEET_STANDIN_OLLAMA_LOAD_SECONDS"))
                entry = {"size": need, "vram": vram, "runner": runner, "loaded_at": time.time()}
                self.loaded[name] = entry
                standin.log(
                    COMPONENT,
                    "loaded model",
                    model=name,
                    vram_mib=sum(vram.values()),
                    gpus=spec or "cpu",
                    offloaded="%d/%d" % (sum(vram.values()), need),
                )
            entry["used_at"] = time.time()
            entry["expires_at"] = None if keep_alive < 0 else time.time() + keep_alive
            return entry

    def _unload(self, name, why):
        entry = self.loaded.pop(name, None)
        if entry is None:
            return
        runner = entry["runner"]
        try:
            runner.stdin.close()  # the runner frees its VRAM and exits
            runner.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            runner.kill()
        standin.log(COMPONENT, "unloaded model", model=name, reason=why)

    def unload(self, name, why="keep_alive 0"):
        with self.lock:
            self._unload(name, why)

    def expire(self):
        while True:
            time.sleep(0.1)
            now = time.time()
            with self.lock:
                for name in [
                    n
                    for n, e in self.loaded.items()
                    if e["expires_at"] is not None and e["expires_at"] <= now
                ]:
                    self._unload(name, "keep_alive expired")

    def stop(self):
        with self.lock:
            for name in list(self.loaded):
                self._unload(name, "server stopping")

    def ps(self):
        with self.lock:
            out = []
            for name, e in sorted(self.loaded.items()):
                expires = (
                    e["expires_at"]
                    if e["expires_at"] is not None
                    else time.time() + 10 * 365 * 86400
                )
                out.append(
                    {
                        "name": name,
                        "model": name,
                        "size": e["size"] * MIB,
                        "digest": digest(name),
                        "details": details(name),
                        "expires_at": iso(expires),
                        "size_vram": sum(e["vram"].values()) * MIB,
                        "context_length": 4096,
                        "standin_gpus": sorted(e["vram"]),
                    }
                )
            return out


MODELS = None


def reply_text(name, prompt):
    gpus = gpuview.visible_gpus()
    where = ",".join(g["uuid"] for g in gpus) if gpus else "cpu"
    return "stand-in reply from %s on %s to: %s" % (name, where, (prompt or "")[:60])


class Handler(standin.JSONHandler):
    component = COMPONENT

    def _model_or_404(self, body):
        name = normalise(body.get("model") or body.get("name"))
        if name == ":latest":
            self.send_json(400, {"error": "model is required"})
            return None
        if name not in MODELS.pulled():
            self.send_json(404, {"error": 'model "%s" not found, try pulling it first' % name})
            return None
        return name

    def root(self, _body):
        self.send_text(200, "Ollama is running")

    def version(self, _body):
        self.send_json(200, {"version": standin.setting("GPUFLEET_STANDIN_OLLAMA_VERSION")})

    def tags(self, _body):
        models = [
            {
                "name": n,
                "model": n,
                "modified_at": iso(time.time()),
                "size": size_of(n) * MIB,
                "digest": digest(n),
                "details": details(n),
            }
            for n in MODELS.pulled()
        ]
        self.send_json(200, {"models": models})

    def ps(self, _body):
        self.send_json(200, {"models": MODELS.ps()})

    def info(self, _body):
        gpus = gpuview.visible_gpus()
        self.send_json(
            200,
            {
                "standin": "ollama",
                "mode": "gpu" if gpus else "cpu",
                "low_vram": sum(g["total_mib"] for g in gpus) < 20 * 1024,
                "gpus": standin.gpu_summary(gpus),
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
                "nvidia_visible_devices": os.environ.get("NVIDIA_VISIBLE_DEVICES"),
                "pid": os.getpid(),
            },
        )

    def _keep(self, body):
        try:
            return standin.duration(body.get("keep_alive"), MODELS.default_keep)
        except ValueError as exc:
            self.send_json(400, {"error": str(exc)})
            return None

    def _answer(self, body, name, text, chat):
        keep = self._keep(body)
        if keep is None:
            return
        started = time.time()
        MODELS.load(name, keep)
        if keep == 0:
            MODELS.unload(name)
        now = iso(time.time())
        final = {
            "model": name,
            "created_at": now,
            "done": True,
            "done_reason": "stop",
            "total_duration": int((time.time() - started) * 1e9),
            "eval_count": len(text.split()),
        }
        if chat:
            final["message"] = {
                "role": "assistant",
                "content": "" if body.get("stream", True) else text,
            }
        else:
            final["response"] = "" if body.get("stream", True) else text
        if body.get("stream", True):
            words = text.split(" ")
            delay = standin.seconds("GPUFLEET_STANDIN_TOKEN_SECONDS")

            def chunks():
                for i, word in enumerate(words):
                    piece = word if i == 0 else " " + word
                    if delay:
                        time.sleep(delay)
                    part = {"model": name, "created_at": iso(time.time()), "done": False}
                    if chat:
                        part["message"] = {"role": "assistant", "content": piece}
                    else:
                        part["response"] = piece
                    yield json.dumps(part) + "\n"
                yield json.dumps(final) + "\n"

            self.stream_lines(chunks())
        else:
            self.send_json(200, final)

    def generate(self, body):
        name = self._model_or_404(body)
        if name is None:
            return
        if not body.get("prompt"):
            keep = self._keep(body)
            if keep is None:
                return
            if keep == 0:
                MODELS.unload(name)
                reason = "unload"
            else:
                MODELS.load(name, keep)
                reason = "load"
            self.send_json(
                200,
                {
                    "model": name,
                    "created_at": iso(time.time()),
                    "response": "",
                    "done": True,
                    "done_reason": reason,
                },
            )
            return
        self._answer(body, name, reply_text(name, body.get("prompt")), chat=False)

    def chat(self, body):
        name = self._model_or_404(body)
        if name is None:
            return
        messages = body.get("messages") or []
        if not messages:
            keep = self._keep(body)
            if keep is None:
                return
            if keep == 0:
                MODELS.unload(name)
            else:
                MODELS.load(name, keep)
            self.send_json(
                200,
                {
                    "model": name,
                    "created_at": iso(time.time()),
                    "message": {"role": "assistant", "content": ""},
                    "done": True,
                    "done_reason": "unload" if keep == 0 else "load",
                },
            )
            return
        self._answer(body, name, reply_text(name, messages[-1].get("content", "")), chat=True)

    def pull(self, body):
        name = normalise(body.get("model") or body.get("name"))
        MODELS.pull(name)
        statuses = ["pulling manifest", "verifying sha256 digest", "writing manifest", "success"]
        if body.get("stream", True):
            self.stream_lines(json.dumps({"status": s}) + "\n" for s in statuses)
        else:
            self.send_json(200, {"status": "success"})

    def show(self, body):
        name = self._model_or_404(body)
        if name is not None:
            self.send_json(
                200,
                {
                    "details": details(name),
                    "modelfile": "# stand-in",
                    "parameters": "",
                    "model_info": {"general.parameter_count": size_of(name) * 1_600_000},
                },
            )

    def delete_model(self, body):
        name = normalise(body.get("model") or body.get("name"))
        if MODELS.delete(name):
            self.send_json(200, {})
        else:
            self.send_json(404, {"error": 'model "%s" not found' % name})

    def v1_models(self, _body):
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {"id": n, "object": "model", "created": int(time.time()), "owned_by": "library"}
                    for n in MODELS.pulled()
                ],
            },
        )

    def v1_chat(self, body):
        name = self._model_or_404(body)
        if name is None:
            return
        text = reply_text(name, (body.get("messages") or [{}])[-1].get("content", ""))
        MODELS.load(name, MODELS.default_keep)
        self.send_json(
            200,
            {
                "id": "chatcmpl-standin",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": name,
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": text},
                    }
                ],
                "usage": {
                    "prompt_tokens": 1,
                    "completion_tokens": len(text.split()),
                    "total_tokens": 1 + len(text.split()),
                },
            },
        )

    def do_DELETE(self):
        if self.path.split("?", 1)[0] == "/api/delete":
            body = self._body()
            self.delete_model(body or {})
        else:
            self.send_text(404, "404 page not found")


Handler.routes = {
    ("GET", "/"): Handler.root,
    ("GET", "/api/version"): Handler.version,
    ("GET", "/api/tags"): Handler.tags,
    ("GET", "/api/ps"): Handler.ps,
    ("GET", "/api/standin"): Handler.info,
    ("POST", "/api/generate"): Handler.generate,
    ("POST", "/api/chat"): Handler.chat,
    ("POST", "/api/pull"): Handler.pull,
    ("POST", "/api/show"): Handler.show,
    ("GET", "/v1/models"): Handler.v1_models,
    ("POST", "/v1/chat/completions"): Handler.v1_chat,
}


def serve():
    global MODELS  # noqa: PLW0603 - one model store per server process
    host, port = standin.parse_host_port(os.environ.get("OLLAMA_HOST"), "127.0.0.1", 11434)
    standin.log(
        "routes.go",
        "server config",
        OLLAMA_HOST="%s:%d" % (host, port),
        CUDA_VISIBLE_DEVICES=os.environ.get("CUDA_VISIBLE_DEVICES", ""),
        OLLAMA_KEEP_ALIVE=os.environ.get("OLLAMA_KEEP_ALIVE", "5m0s"),
        standin="true",
    )
    MODELS = Models()
    gpus = gpuview.visible_gpus()
    if not gpus:
        standin.log("gpu.go", "no compatible GPUs were discovered")
    for gpu in gpus:
        standin.log(
            "types.go",
            "inference compute",
            id=gpu["uuid"],
            library="cuda",
            name=gpu["name"],
            total="%.1f GiB" % (gpu["total_mib"] / 1024.0),
            available="%.1f GiB" % (gpu["free_mib"] / 1024.0),
        )
    total = sum(g["total_mib"] for g in gpus)
    if total < 20 * 1024:
        standin.log(
            "routes.go",
            "entering low vram mode",
            **{"total vram": "%.1f GiB" % (total / 1024.0), "threshold": "20.0 GiB"},
        )
    threading.Thread(target=MODELS.expire, daemon=True).start()
    standin.serve(Handler, host, port, on_stop=MODELS.stop)


def runner(args):
    """Hold VRAM for one loaded model until stdin closes (the server unloads it) or we die."""
    spec = args[args.index("--vram") + 1]  # --model: named in the command line only
    reg = gpuview.Registration()
    for item in filter(None, spec.split(",")):
        index, mib = item.split("=")
        reg.set(int(index), int(mib))
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    reg.release()


def client(command):
    host, port = standin.parse_host_port(os.environ.get("OLLAMA_HOST"), "127.0.0.1", 11434)
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    path = {"list": "/api/tags", "ls": "/api/tags", "ps": "/api/ps"}[command]
    with urllib.request.urlopen("http://%s:%d%s" % (host, port, path), timeout=10) as answer:
        models = json.load(answer)["models"]
    if command == "ps":
        print("%-24s %-14s %-10s %s" % ("NAME", "ID", "SIZE", "PROCESSOR"))
        for m in models:
            share = 100 * m["size_vram"] // max(1, m["size"])
            proc = (
                "100% GPU"
                if share == 100
                else ("100% CPU" if share == 0 else "%d%%/%d%% CPU/GPU" % (100 - share, share))
            )
            print(
                "%-24s %-14s %-10s %s"
                % (m["name"], m["digest"][:12], "%.1f GB" % (m["size"] / 1e9), proc)
            )
    else:
        print("%-24s %-14s %s" % ("NAME", "ID", "SIZE"))
        for m in models:
            print("%-24s %-14s %.1f GB" % (m["name"], m["digest"][:12], m["size"] / 1e9))


def main():
    args = sys.argv[1:]
    if not args or args[0] in ("-h", "--help", "help"):
        print("Usage: ollama serve | list | ps | --version   (lab stand-in, not Ollama)")
        return 0
    if args[0] in ("-v", "--version"):
        print(
            "ollama version is %s (lab stand-in)"
            % standin.setting("GPUFLEET_STANDIN_OLLAMA_VERSION")
        )
        return 0
    if args[0] in ("serve", "runner"):
        # The real server and its runner are both the `ollama` binary (`ollama runner ...` is
        # a subprocess of `ollama serve`): both have the kernel name (comm) "ollama".
        standin.set_process_name("ollama")
    if args[0] == "serve":
        serve()
        return 0
    if args[0] == "runner":
        runner(args[1:])
        return 0
    if args[0] in ("list", "ls", "ps"):
        client(args[0])
        return 0
    print('Error: unknown command %r for "ollama" (lab stand-in)' % args[0], file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
