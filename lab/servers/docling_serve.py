# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for docling-serve (not Docling): `docling-serve run [--host H] [--port 5001]`.

Port also from UVICORN_PORT / DOCLING_SERVE_PORT; VRAM GPUFLEET_STANDIN_DOCLING_VRAM_MIB (2048).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import sidecar

parser = argparse.ArgumentParser(prog="docling-serve")
parser.add_argument("command", nargs="?", default="run", choices=["run", "dev"])
parser.add_argument("--host", default=os.environ.get("UVICORN_HOST", "0.0.0.0"))
parser.add_argument(
    "--port",
    type=int,
    default=int(os.environ.get("DOCLING_SERVE_PORT") or os.environ.get("UVICORN_PORT") or 5001),
)
args, _unknown = parser.parse_known_args()
sidecar.run("docling", args.host, args.port, 2048, "docling-serve")
