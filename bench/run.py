# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Run the benchmarks, write bench/results/<name>.json and the tables in bench/README.md.

    python bench/run.py                 # every benchmark (`make bench`)
    python bench/run.py placement facts # some of them
    python bench/run.py --quick         # smoke: each one's quick mode, no lab, README untouched

Each benchmark is a script in bench/ that takes --quick, --json FILE and --markdown FILE;
adding one is one line in BENCHMARKS. Its tables replace the lines between
``<!-- bench:NAME:begin -->`` and ``<!-- bench:NAME:end -->`` in bench/README.md, so the
prose around them stays. bench/results/run.json records the wall time of each and in all.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common

HERE = os.path.dirname(os.path.abspath(__file__))
README = os.path.join(HERE, "README.md")
RESULTS = os.path.join(HERE, "results")

# (name, script, budget in seconds for a full run; the script is stopped at twice that)
BENCHMARKS = (
    ("placement", "placement.py", 180),
    ("switch", "switch.py", 1200),
    ("facts", "facts.py", 180),
    ("fleet", "fleet.py", 480),
)


def replace_section(text, name, body):
    """``text`` with the block between NAME's markers replaced by ``body``."""
    begin, end = "<!-- bench:%s:begin -->" % name, "<!-- bench:%s:end -->" % name
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError("bench/README.md has no %s ... %s markers" % (begin, end))
    return pattern.sub(lambda _m: "%s\n%s\n%s" % (begin, body.strip("\n"), end), text)


def run_one(name, script, budget, quick, out_dir):
    json_path = os.path.join(out_dir, "%s.json" % name)
    md_path = os.path.join(out_dir, "%s.md" % name)
    command = [sys.executable, os.path.join(HERE, script), "--json", json_path,
               "--markdown", md_path] + (["--quick"] if quick else [])
    started = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              timeout=2 * budget if not quick else 120)
        rc, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        rc, output = 124, "stopped after %d s\n%s" % (exc.timeout, exc.stdout or "")
    seconds = time.perf_counter() - started
    markdown = ""
    if rc == 0 and os.path.exists(md_path):
        with open(md_path, encoding="utf-8") as handle:
            markdown = handle.read()
    return {"name": name, "rc": rc, "seconds": seconds, "budget_s": budget,
            "output": output[-4000:] if rc else "", "markdown": markdown}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("names", nargs="*", help="benchmarks to run (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="smoke: quick modes only, no lab, nothing written into bench/")
    args = parser.parse_args(argv)
    known = [b[0] for b in BENCHMARKS]
    unknown = sorted(set(args.names) - set(known))
    if unknown:
        parser.error("unknown benchmark(s) %s; known: %s"
                     % (", ".join(unknown), ", ".join(known)))
    chosen = [b for b in BENCHMARKS if not args.names or b[0] in args.names]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        out_dir = scratch if args.quick else RESULTS
        os.makedirs(out_dir, exist_ok=True)
        runs = []
        for name, script, budget in chosen:
            sys.stderr.write("bench: %s ...\n" % name)
            sys.stderr.flush()
            run = run_one(name, script, budget, args.quick, out_dir)
            sys.stderr.write("bench: %s rc %d in %.0f s (budget %d s)\n"
                             % (name, run["rc"], run["seconds"], budget))
            if run["rc"]:
                sys.stderr.write(run["output"] + "\n")
            runs.append(run)
        total = time.perf_counter() - started
        failed = [r["name"] for r in runs if r["rc"]]
        if not args.quick:
            summary = {"machine": _common.machine(), "total_s": total,
                       "benchmarks": [{k: r[k] for k in ("name", "rc", "seconds", "budget_s")}
                                      for r in runs]}
            with open(os.path.join(RESULTS, "run.json"), "w", encoding="utf-8") as handle:
                json.dump(summary, handle, indent=1, sort_keys=True)
                handle.write("\n")
            with open(README, encoding="utf-8") as handle:
                text = handle.read()
            for run in runs:
                if run["markdown"]:
                    text = replace_section(text, run["name"], run["markdown"])
            if not args.names:
                text = replace_section(text, "run", "Last full run (`make bench`): %.1f min "
                                       "in all; %s. %s CPUs, load average %s at the end, "
                                       "commit %s, %s." % (
                                           total / 60.0, ", ".join(
                                               "%s %.0f s" % (r["name"], r["seconds"])
                                               for r in runs),
                                           summary["machine"]["cpus"],
                                           summary["machine"]["load"],
                                           summary["machine"]["commit"],
                                           summary["machine"]["date"]))
            with open(README, "w", encoding="utf-8") as handle:
                handle.write(text)
        for run in runs:
            print("%-10s rc %d  %6.1f s" % (run["name"], run["rc"], run["seconds"]))
            if args.quick and run["rc"] == 0:
                print(run["markdown"])
    print("total %.1f s" % total)
    if failed:
        print("FAILED: %s" % ", ".join(failed))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
