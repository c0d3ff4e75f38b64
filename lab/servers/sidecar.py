# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN sidecars (docling-serve, a vision server): a health endpoint and a VRAM footprint.

Holds GPUFLEET_STANDIN_<KIND>_VRAM_MIB on the first GPU it sees (none: runs on CPU, holds
nothing), after GPUFLEET_STANDIN_SIDECAR_STARTUP_SECONDS; GET /health answers
{"status": "ok"} only then. GET /standin reports what it sees.
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import gpuview
import standin


def run(kind, host, port, default_vram, program):
    # A Python console script (docling-serve) shows as its script's name in /proc/<pid>/comm.
    standin.set_process_name(program)
    time.sleep(standin.seconds("GPUFLEET_STANDIN_SIDECAR_STARTUP_SECONDS"))
    gpus = gpuview.visible_gpus()
    vram = int(standin.setting("GPUFLEET_STANDIN_%s_VRAM_MIB" % kind.upper(), str(default_vram)))
    reg = gpuview.Registration()
    if gpus:
        reg.set(gpus[0]["index"], vram)
        standin.log(kind, "using GPU", uuid=gpus[0]["uuid"], vram_mib=vram)
    else:
        standin.log(kind, "no GPU visible: running on CPU")

    class Handler(standin.JSONHandler):
        component = kind

        def health(self, _body):
            self.send_json(200, {"status": "ok"})

        def info(self, _body):
            self.send_json(
                200,
                {
                    "standin": kind,
                    "gpus": standin.gpu_summary(gpus),
                    "pid": os.getpid(),
                    "vram_mib": vram if gpus else 0,
                },
            )

    Handler.routes = {
        ("GET", "/health"): Handler.health,
        ("GET", "/standin"): Handler.info,
        ("GET", "/"): Handler.health,
    }
    standin.serve(Handler, host, port, on_stop=reg.release)
