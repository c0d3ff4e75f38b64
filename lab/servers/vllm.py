# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for vLLM's OpenAI-compatible server (not vLLM).

`vllm serve MODEL [--port 8000] [--host 0.0.0.0] [--gpu-memory-utilization 0.9]
[--served-model-name NAME] [--max-model-len N] [--tensor-parallel-size N]
[--kv-cache-memory BYTES]` (also `--model MODEL`, as
`python -m vllm.entrypoints.openai.api_server`).

Startup, like vLLM's worker (timings from GPUFLEET_STANDIN_VLLM_*_SECONDS):
1. startup delay (imports, engine args);
2. device init: snapshot of free memory; refuses when free < utilization x total:
   "ValueError: Free memory on device (F/T GiB) on startup is less than desired GPU memory
   utilization (U, R GiB). ..."
3. weights load: holds the model's weights on the GPU;
4. profiling window: then asserts that free memory did not grow since the snapshot:
   "AssertionError: Error in memory profiling. Initial free memory X GiB, current free
   memory Y GiB. This happens when other processes sharing the same container release GPU
   memory while vLLM is profiling during initialization. ..." (seed 003);
5. holds utilization x total (or weights + --kv-cache-memory) and only then opens its port:
   /health (200), /v1/models, /v1/completions, /v1/chat/completions, /version, /metrics.

Its kernel name (/proc/<pid>/comm, what NVML shows) is ``VLLM::EngineCore`` cut to 15
characters, ``VLLM::EngineCor``, prefix from VLLM_PROCESS_NAME_PREFIX, as real vLLM's engine
core (PRs 21445, 22205): a match on the name "vllm" finds it no more than the real one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import gpuview
import standin

COMPONENT = "api_server.py"
GIB = 1024.0
WEIGHTS_MIB = {
    "facebook/opt-125m": 240,
    "Qwen/Qwen2.5-0.5B-Instruct": 950,
    "Qwen/Qwen2.5-1.5B-Instruct": 2950,
    "Qwen/Qwen2.5-7B-Instruct": 14500,
    "meta-llama/Llama-3.2-3B-Instruct": 6130,
}


def weights_of(model):
    if model in WEIGHTS_MIB:
        return WEIGHTS_MIB[model]
    return int(standin.setting("GPUFLEET_STANDIN_VLLM_WEIGHTS_MIB", "1024"))


def parse(argv):
    if argv and argv[0] == "serve":
        argv = argv[1:]
    parser = argparse.ArgumentParser(prog="vllm serve", description="lab stand-in for vLLM")
    parser.add_argument("model_tag", nargs="?")
    parser.add_argument("--model")
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--served-model-name", nargs="+")
    parser.add_argument("--max-model-len", type=int, default=4096)
    parser.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    parser.add_argument("--kv-cache-memory", type=int)
    args, unknown = parser.parse_known_args(argv)
    args.model = args.model_tag or args.model or "facebook/opt-125m"
    if not 0 < args.gpu_memory_utilization <= 1:
        parser.error(
            "--gpu-memory-utilization must be in (0, 1]; got: %s" % args.gpu_memory_utilization
        )
    return args, unknown


REG = None


def crash(exc_type, message):
    if REG is not None:
        REG.release()  # the engine core exits: the driver tears its context down
    sys.stderr.write(
        "ERROR %s [core.py] EngineCore failed to start.\n" % time.strftime("%m-%d %H:%M:%S")
    )
    sys.stderr.write(
        "Traceback (most recent call last):\n"
        '  File "/usr/local/lib/python3.12/dist-packages/vllm/v1/worker/gpu_worker.py", line 0, '
        "in determine_available_memory (lab stand-in)\n"
    )
    sys.stderr.write("%s: %s\n" % (exc_type, message))
    sys.stderr.write("RuntimeError: Engine core initialization failed. See root cause above.\n")
    sys.stderr.flush()
    sys.exit(1)


class Handler(standin.JSONHandler):
    component = COMPONENT
    args = None

    def health(self, _body):
        self.send_json(200, b"", "application/json")

    def version(self, _body):
        self.send_json(200, {"version": standin.setting("GPUFLEET_STANDIN_VLLM_VERSION")})

    def models(self, _body):
        a = self.args
        self.send_json(
            200,
            {
                "object": "list",
                "data": [
                    {
                        "id": name,
                        "object": "model",
                        "created": int(time.time()),
                        "owned_by": "vllm",
                        "root": a.model,
                        "parent": None,
                        "max_model_len": a.max_model_len,
                    }
                    for name in a.names
                ],
            },
        )

    def _check(self, body):
        if body.get("model") not in self.args.names:
            self.send_json(
                404,
                {
                    "object": "error",
                    "type": "NotFoundError",
                    "code": 404,
                    "message": "The model `%s` does not exist." % body.get("model"),
                },
            )
            return False
        return True

    def completions(self, body):
        if self._check(body):
            text = " stand-in completion by %s" % body["model"]
            self.send_json(
                200,
                {
                    "id": "cmpl-standin",
                    "object": "text_completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5},
                },
            )

    def chat(self, body):
        if self._check(body):
            text = "stand-in chat reply by %s" % body["model"]
            self.send_json(
                200,
                {
                    "id": "chatcmpl-standin",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [
                        {
                            "index": 0,
                            "finish_reason": "stop",
                            "message": {"role": "assistant", "content": text},
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 5, "total_tokens": 6},
                },
            )

    def metrics(self, _body):
        self.send_text(
            200, '# stand-in\nvllm:num_requests_running{model_name="%s"} 0\n' % self.args.names[0]
        )

    def info(self, _body):
        self.send_json(
            200,
            {
                "standin": "vllm",
                "gpus": standin.gpu_summary(self.gpus),
                "pid": os.getpid(),
                "held_mib": self.held,
            },
        )


Handler.routes = {
    ("GET", "/health"): Handler.health,
    ("GET", "/ping"): Handler.health,
    ("GET", "/version"): Handler.version,
    ("GET", "/v1/models"): Handler.models,
    ("POST", "/v1/completions"): Handler.completions,
    ("POST", "/v1/chat/completions"): Handler.chat,
    ("GET", "/metrics"): Handler.metrics,
    ("GET", "/standin"): Handler.info,
}


def process_title():
    """What real vLLM calls this process (vllm.utils.system_utils.set_process_title, PRs
    21445 and 22205): ``<VLLM_PROCESS_NAME_PREFIX>::EngineCore``, prefix ``VLLM`` by default.
    The stand-in is one process (real vLLM: ``VLLM::APIServer`` plus the ``VLLM::EngineCore``
    that holds the GPU memory), so it takes the engine core's name."""
    return "%s::EngineCore" % (os.environ.get("VLLM_PROCESS_NAME_PREFIX") or "VLLM")


def main():
    args, unknown = parse(sys.argv[1:])
    args.names = args.served_model_name or [args.model]
    # The kernel keeps 15 characters: NVML and nvidia-smi show "VLLM::EngineCor".
    standin.set_process_name(process_title())
    standin.log(
        COMPONENT,
        "vLLM API server version %s (lab stand-in)"
        % standin.setting("GPUFLEET_STANDIN_VLLM_VERSION"),
    )
    standin.log(
        COMPONENT,
        "args",
        model=args.model,
        port=args.port,
        gpu_memory_utilization=args.gpu_memory_utilization,
        ignored=" ".join(unknown),
    )
    time.sleep(standin.seconds("GPUFLEET_STANDIN_VLLM_STARTUP_SECONDS"))

    gpus = gpuview.visible_gpus()[: args.tensor_parallel_size]
    if len(gpus) < args.tensor_parallel_size:
        crash(
            "RuntimeError",
            "No CUDA GPUs are available"
            if not gpus
            else "tensor parallel size %d > %d visible GPUs"
            % (args.tensor_parallel_size, len(gpus)),
        )
    # 2. device init: the snapshot every later check compares with.
    init = {g["index"]: g for g in gpus}
    requested = {i: g["total_mib"] * args.gpu_memory_utilization for i, g in init.items()}
    for index, gpu in init.items():
        if gpu["free_mib"] < requested[index]:
            crash(
                "ValueError",
                "Free memory on device (%.2f/%.2f GiB) on startup is less than desired GPU memory "
                "utilization (%s, %.2f GiB). Decrease GPU memory utilization or reduce GPU memory "
                "used by other processes."
                % (
                    gpu["free_mib"] / GIB,
                    gpu["total_mib"] / GIB,
                    args.gpu_memory_utilization,
                    requested[index] / GIB,
                ),
            )
    global REG  # noqa: PLW0603 - crash() frees it
    reg = REG = gpuview.Registration()
    # 3. weights
    weights = weights_of(args.model) // len(gpus)
    for index in init:
        reg.set(index, weights)
    standin.log("gpu_model_runner.py", "Model loading took %.2f GiB" % (weights / GIB))
    time.sleep(standin.seconds("GPUFLEET_STANDIN_VLLM_LOAD_SECONDS"))
    # 4. profiling window
    standin.log("gpu_worker.py", "Memory profiling started")
    time.sleep(standin.seconds("GPUFLEET_STANDIN_VLLM_PROFILE_SECONDS"))
    now = {g["index"]: g for g in gpuview.visible_gpus(gpuview.View())}
    for index, gpu in init.items():
        current = now[index]["free_mib"] if index in now else gpu["free_mib"]
        if not gpu["free_mib"] > current:
            crash(
                "AssertionError",
                "Error in memory profiling. Initial free memory %s GiB, current free memory %s GiB. "  # noqa: E501
                "This happens when other processes sharing the same container release GPU memory while "  # noqa: E501
                "vLLM is profiling during initialization. To fix this, ensure consistent GPU memory "  # noqa: E501
                "allocation or isolate vLLM in its own container."
                % (round(gpu["free_mib"] / GIB, 2), round(current / GIB, 2)),
            )
    # 5. KV cache: the rest of the budget
    held = {}
    for index in init:
        if args.kv_cache_memory:
            held[index] = weights + args.kv_cache_memory // (1024 * 1024)
        else:
            held[index] = int(requested[index])
        reg.set(index, held[index])
    standin.log(
        "gpu_worker.py",
        "Available KV cache memory: %.2f GiB" % ((max(held.values()) - weights) / GIB),
    )
    Handler.args, Handler.gpus, Handler.held = args, gpus, held
    standin.log("launcher.py", "Starting vLLM API server on http://%s:%d" % (args.host, args.port))
    standin.log("on.py", "Application startup complete.")
    try:
        standin.serve(Handler, args.host, args.port, on_stop=reg.release)
    except Exception:
        traceback.print_exc()
        reg.release()
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
