# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""LAB STAND-IN for a vision sidecar (moondream-like): `vision-server [--host H] [--port 8002]`.

Port also from VISION_PORT; VRAM GPUFLEET_STANDIN_VISION_VRAM_MIB (1800).
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.realpath(__file__)))
import sidecar

parser = argparse.ArgumentParser(prog="vision-server")
parser.add_argument("--host", default="0.0.0.0")
parser.add_argument("--port", type=int, default=int(os.environ.get("VISION_PORT") or 8002))
args, _unknown = parser.parse_known_args()
sidecar.run("vision", args.host, args.port, 1800, "vision-server")
