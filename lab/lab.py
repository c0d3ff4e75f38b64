#!/usr/bin/env python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The simulated GPU lab: start, show and remove its hosts (lab/README.md).

  lab/lab.py up     [--inventory inventory/lab] [--hosts a,b]   start (or refresh) hosts
  lab/lab.py status [--inventory inventory/lab]                 one line a host
  lab/lab.py down   [--hosts a,b]                                stop and remove hosts
  lab/lab.py image                                               build the images only
  lab/lab.py write-state HOST                                    rewrite a host's driver state
  lab/lab.py up|down|status --fleet N      the generated fleet lab-fleet-01..N (beside the rest)
  lab/lab.py inventory [--host H]          the running lab hosts as Ansible inventory JSON
  ansible-playbook -i lab/lab.py ...       the same, as a script inventory (--list / --host)

Each host is a container of the image lab/image/build.sh makes, named like the inventory
host and labelled org.gpufleet.lab=<host>; only containers and volumes with that label are
ever touched. The Docker engine is the one lab/engine.sh chooses (DOCKER_HOST).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time

import yaml

LAB = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(LAB)
LABEL = "org.gpufleet.lab"
STATE = "/etc/gpufleet-nvml/state"
HOST_PROCS = "/run/gpufleet-nvml/procs"
RUN_FLAGS = [
    # systemd as PID 1 and an inner Docker engine without --privileged (lab/README.md).
    "--cap-add",
    "SYS_ADMIN",
    "--cap-add",
    "NET_ADMIN",
    "--security-opt",
    "seccomp=unconfined",
    "--security-opt",
    "apparmor=unconfined",
    "--cgroupns",
    "host",
    "-v",
    "/sys/fs/cgroup:/sys/fs/cgroup:rw",
    "--tmpfs",
    "/run",
    "--tmpfs",
    "/run/lock",
    "--tmpfs",
    "/tmp",
    "--stop-signal",
    "SIGRTMIN+3",
    "--network",
    "none",
]


class LabError(Exception):
    pass


def docker(*args, check=True, input=None, capture=True, timeout=300):
    proc = subprocess.run(
        ["docker", *args], input=input, check=False, capture_output=capture, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise LabError(
            "docker %s failed (rc %d): %s"
            % (
                " ".join(args[:3]),
                proc.returncode,
                (proc.stderr or b"").decode(errors="replace").strip(),
            )
        )
    return proc


def dexec(host, script, input=None, check=True, timeout=120):
    return docker(
        "exec", "-i", host, "sh", "-ec", script, input=input, check=check, timeout=timeout
    )


# --- inventory ---------------------------------------------------------------------------------


def _merge_group_vars(inv_dir, group, into):
    for ext in (".yml", ".yaml"):
        path = os.path.join(inv_dir, "group_vars", group + ext)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as handle:
                for key, value in (yaml.safe_load(handle) or {}).items():
                    into.setdefault(key, value)


def load_inventory(inv_dir):
    """{host: vars} of every host of the lab inventory (host vars over group vars)."""
    with open(os.path.join(inv_dir, "hosts.yml"), encoding="utf-8") as handle:
        data = yaml.safe_load(handle)
    hosts = {}

    def walk(name, group, parents):
        for host, hvars in (group.get("hosts") or {}).items():
            merged = dict(hvars or {})
            for g in [name, *parents]:
                _merge_group_vars(inv_dir, g, merged)
            _merge_group_vars(inv_dir, "all", merged)
            hosts[host] = merged
        for child, sub in (group.get("children") or {}).items():
            walk(child, sub or {}, [name, *parents])

    for name, group in data.items():
        walk(name, group or {}, [])
    return hosts


def state_text(host, hvars):
    """The stand-in NVML state file of one host (lab/nvml/README.md)."""
    lines = [
        "# written by lab/lab.py from the lab inventory: host %s" % host,
        "driver_version %s" % hvars.get("lab_driver_version", "590.48.01"),
        "cuda_driver_version %s" % hvars.get("lab_cuda_driver_version", 13010),
        "drain_delay %s" % float(hvars.get("lab_drain_delay", 1.0)),
        "procs_dir %s" % HOST_PROCS,
    ]
    for i, gpu in enumerate(hvars.get("lab_gpus") or []):
        for key in ("name", "memory_mib", "uuid", "compute_capability"):
            if key not in gpu:
                raise LabError("%s: lab_gpus[%d].%s is required" % (host, i, key))
        lines += [
            "gpu",
            "name %s" % gpu["name"],
            "uuid %s" % gpu["uuid"],
            "pci_bus_id %s" % gpu.get("pci_bus_id", "00000000:%02X:00.0" % (i + 1)),
            "memory_total_mib %d" % int(gpu["memory_mib"]),
            "memory_reserved_mib %d" % int(gpu.get("memory_reserved_mib", 0)),
            "memory_used_mib %d" % int(gpu.get("memory_used_mib", 0)),
            "compute_capability %s" % gpu["compute_capability"],
            "temperature_c %d" % int(gpu.get("temperature_c", 40)),
            "utilization_gpu 0",
            "utilization_memory 0",
        ]
        if "power_limit_mw" in gpu:
            lines.append("power_limit_mw %d" % int(gpu["power_limit_mw"]))
        if gpu.get("unified"):
            lines.append("unified 1")
        if gpu.get("lost"):
            lines.append("lost 1")
        if "mig_mode" in gpu:
            lines.append("mig_mode %d" % (1 if gpu["mig_mode"] else 0))
        for mig in gpu.get("mig_devices") or []:
            lines.append(
                "mig_device %d %d %d %d %s %s"
                % (
                    mig["gi"],
                    mig["ci"],
                    mig["memory_mib"],
                    mig.get("used_mib", 0),
                    mig["uuid"],
                    mig["name"],
                )
            )
    return "\n".join(lines) + "\n"


def standin_env(hvars):
    timings = hvars.get("lab_timings") or {}
    return "".join("%s=%s\n" % (k, v) for k, v in sorted(timings.items()))


# --- the generated fleet (lab.py up --fleet N) -----------------------------------------------

FLEET_PREFIX = "lab-fleet-"
FLEET_GROUP = "lab_fleet"
# Small boxes as a fleet has them, cycled over lab-fleet-01..N: (GPU name, MiB as nvidia-smi
# reports it, compute capability), or None for a CPU box.
FLEET_BOXES = (
    ("NVIDIA L4", 23034, "8.9"),
    ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
    ("NVIDIA A10", 23028, "8.6"),
    None,
    ("Tesla T4", 15360, "7.5"),
    ("NVIDIA RTX A4000", 16376, "8.6"),
    ("NVIDIA L4", 23034, "8.9"),
    ("NVIDIA GeForce RTX 4090", 24564, "8.9"),
)
FLEET_MAX = 64


def fleet_name(index):
    return "%s%02d" % (FLEET_PREFIX, index)


def fleet_host_vars(name):
    """The lab_gpus of a generated fleet host, from its number (the same on every call)."""
    suffix = name[len(FLEET_PREFIX):] if name.startswith(FLEET_PREFIX) else ""
    if not suffix.isdigit() or not 1 <= int(suffix) <= FLEET_MAX:
        raise LabError("not a fleet host name (%s01..%02d): %s" % (FLEET_PREFIX, FLEET_MAX, name))
    index = int(suffix)
    box = FLEET_BOXES[(index - 1) % len(FLEET_BOXES)]
    if box is None:
        return {"lab_gpus": []}
    gpu_name, memory_mib, capability = box
    return {"lab_gpus": [{
        "name": gpu_name,
        "memory_mib": memory_mib,
        "uuid": "GPU-f1ee7000-0000-4000-8000-%012d" % index,
        "compute_capability": capability,
        "pci_bus_id": "00000000:01:00.0",
        "memory_reserved_mib": 256,
    }]}


def fleet_hosts(inv_dir, count):
    """{host: vars} of lab-fleet-01..count, with the lab group's variables like every lab host."""
    if not 1 <= count <= FLEET_MAX:
        raise LabError("--fleet must be 1-%d; got: %d" % (FLEET_MAX, count))
    hosts = {}
    for index in range(1, count + 1):
        merged = fleet_host_vars(fleet_name(index))
        for group in ("lab", "all"):
            _merge_group_vars(inv_dir, group, merged)
        hosts[fleet_name(index)] = merged
    return hosts


def _group_vars(inv_dir, group):
    merged = {}
    _merge_group_vars(inv_dir, group, merged)
    return merged


def _gpu_group(gpu_name):
    """gpu_<model>, the group of that GPU's hosts.

    NVIDIA GeForce RTX 4090 -> gpu_geforce_rtx_4090.
    """
    slug = "".join(c if c.isalnum() else "_" for c in gpu_name.lower()).strip("_")
    while "__" in slug:
        slug = slug.replace("__", "_")
    if slug.startswith("nvidia_"):
        slug = slug[len("nvidia_"):]
    return "gpu_" + slug


def expected_gpus(lab_gpus):
    """What a lab host declares (gpufleet_expected_gpus): the GPUs the lab gave it."""
    return {
        "count": len(lab_gpus),
        "names": [gpu["name"] for gpu in lab_gpus],
        "min_memory_mib": min((int(gpu["memory_mib"]) for gpu in lab_gpus), default=0),
    }


def inventory_json(inv_dir, running):
    """Ansible's script-inventory JSON (--list) of the running lab hosts.

    Groups: lab (every host, with inventory/lab/group_vars/lab.yml), lab_fleet (the generated
    hosts), gpu_<model> for each GPU model and gpu_none for hosts without a GPU. Host
    variables: lab_gpus and gpufleet_expected_gpus (what the lab gave the host).
    """
    static = load_inventory(inv_dir)
    groups = {"lab": [], FLEET_GROUP: []}
    hostvars = {}
    for host in sorted(running):
        if host in static:
            lab_gpus = static[host].get("lab_gpus") or []
        elif host.startswith(FLEET_PREFIX):
            lab_gpus = fleet_host_vars(host)["lab_gpus"]
            groups[FLEET_GROUP].append(host)
        else:
            continue  # a lab container this inventory does not describe
        groups["lab"].append(host)
        hostvars[host] = {"lab_gpus": lab_gpus, "gpufleet_expected_gpus": expected_gpus(lab_gpus)}
        for group in sorted({_gpu_group(gpu["name"]) for gpu in lab_gpus} or {"gpu_none"}):
            groups.setdefault(group, []).append(host)
    # Ansible adds the hosts in the order it meets them: the lab group, sorted, comes first, so
    # that serial batches (the canary first) follow the host names.
    out = {"_meta": {"hostvars": hostvars}}
    for group in ["lab", FLEET_GROUP, *sorted(set(groups) - {"lab", FLEET_GROUP})]:
        out[group] = {"hosts": groups[group]}
    out["lab"]["vars"] = dict(_group_vars(inv_dir, "all"), **_group_vars(inv_dir, "lab"))
    return out


def running_lab_hosts():
    proc = docker("ps", "--filter", "label=%s" % LABEL, "--format", "{{.Names}}")
    return sorted(proc.stdout.decode().split())


# --- the hosts ---------------------------------------------------------------------------------


def build_images():
    out = subprocess.run(
        [os.path.join(LAB, "image", "build.sh")], check=False, capture_output=True, text=True
    )
    sys.stderr.write(out.stderr)
    if out.returncode != 0:
        raise LabError("lab/image/build.sh failed")
    return dict(line.split("=", 1) for line in out.stdout.split() if "=" in line)


def inspect(host):
    proc = docker("inspect", host, check=False)
    if proc.returncode != 0:
        return None
    info = json.loads(proc.stdout)[0]
    if (info["Config"].get("Labels") or {}).get(LABEL) != host:
        raise LabError(
            "a container named %s exists that the lab did not create; not touching it" % host
        )
    return info


def wait_for(what, probe, timeout):
    deadline = time.time() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.time() > deadline:
            raise LabError("timed out after %ds waiting for %s" % (timeout, what))
        time.sleep(0.2)


def write_file(host, path, text, mode="0644"):
    dexec(
        host,
        'mkdir -p "$(dirname %s)"; cat > %s.tmp; chmod %s %s.tmp; mv %s.tmp %s'
        % (path, path, mode, path, path, path),
        input=text.encode(),
    )


LAB_UNIT_ACCESS = """
getent group render >/dev/null || groupadd -r render
for unit in ollama vllm; do
  mkdir -p /etc/systemd/system/$unit@.service.d
  printf '[Service]\\nReadWritePaths=-%s\\n' \\
    > /etc/systemd/system/$unit@.service.d/gpufleet-lab.conf
done
""" % HOST_PROCS


def configure(host, hvars):
    """Driver state, stand-in settings, NVML library and hook (GPU hosts only), then the engine."""
    gpus = hvars.get("lab_gpus") or []
    write_file(host, "/etc/gpufleet-lab/standin.env", standin_env(hvars))
    if gpus:
        write_file(host, STATE, state_text(host, hvars))
        dexec(
            host,
            """
            mkdir -p %s
            chgrp video %s && chmod 1775 %s
            ln -sf /opt/gpufleet-lab/nvml/libnvidia-ml.so.1 /usr/lib/x86_64-linux-gnu/
            ln -sf /opt/gpufleet-lab/hook/nvidia-container-runtime-hook /usr/local/bin/
            ldconfig
        """
            % (HOST_PROCS, HOST_PROCS, HOST_PROCS),
        )
    else:
        dexec(
            host,
            "rm -f %s /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 "
            "/usr/local/bin/nvidia-container-runtime-hook; ldconfig" % STATE,
        )
    # What a real GPU box has for the hardened units (systemd_units role): a `render` group, and
    # (stand-in driver only) write access for the video group where it counts VRAM; a real
    # driver needs /dev/nvidia*, which ProtectSystem=strict leaves alone.
    dexec(host, LAB_UNIT_ACCESS)
    dexec(host, "touch /etc/gpufleet-lab/configured; systemctl start docker.service")


def up_host(host, hvars, images, recreate=False):
    t0 = time.time()
    info = inspect(host)
    if info is not None and (
        recreate or info["Config"]["Image"] != images["HOST_IMAGE"] or not info["State"]["Running"]
    ):
        down_host(host, keep_volume=False)
        info = None
    elif info is None:
        # A new host gets a new engine: an engine volume left by a host removed halfway (a run
        # stopped during `down`) would bring back that host's containers.
        down_host(host, keep_volume=False)
    volume = "%s-docker" % host
    if info is None:
        docker("volume", "create", "--label", "%s=%s" % (LABEL, host), volume)
        docker(
            "run",
            "-d",
            "--name",
            host,
            "--hostname",
            host,
            "--label",
            "%s=%s" % (LABEL, host),
            *RUN_FLAGS,
            "-v",
            "%s:/var/lib/docker" % volume,
            "-e",
            "GPUFLEET_NVML_STATE=%s" % STATE,
            images["HOST_IMAGE"],
            "/sbin/init",
        )

    def systemd_up():
        proc = docker("exec", host, "systemctl", "is-system-running", check=False)
        return proc.stdout.strip() in (b"running", b"degraded")

    wait_for("systemd in %s" % host, systemd_up, 60)
    configure(host, hvars)
    wait_for(
        "the Docker engine in %s" % host,
        lambda: (
            docker(
                "exec", host, "docker", "info", "-f", "{{.ServerVersion}}", check=False
            ).returncode
            == 0
        ),
        60,
    )
    with open(images["RUNTIME_TAR"], "rb") as tar:
        docker(
            "exec",
            "-i",
            host,
            "sh",
            "/opt/gpufleet-lab/inner/load-images.sh",
            input=tar.read(),
            timeout=300,
        )
    return "%s up in %.1f s" % (host, time.time() - t0)


def down_host(host, keep_volume=False):
    info = inspect(host)
    if info is not None:
        if info["State"]["Running"]:
            # Stop the inner containers first, or their cgroups outlive the host.
            dexec(
                host,
                'ids=$(docker ps -q 2>/dev/null || true); [ -z "$ids" ] || docker stop -t 5 $ids >/dev/null',  # noqa: E501
                check=False,
                timeout=60,
            )
            docker("stop", "-t", "20", host, check=False, timeout=60)
        docker("rm", "-f", host, check=False)
    if not keep_volume:
        vol = docker("volume", "inspect", "%s-docker" % host, check=False)
        if (
            vol.returncode == 0
            and (json.loads(vol.stdout)[0].get("Labels") or {}).get(LABEL) == host
        ):
            docker("volume", "rm", "-f", "%s-docker" % host, check=False)
    return "%s removed" % host


def lab_containers():
    proc = docker("ps", "-a", "--filter", "label=%s" % LABEL, "--format", "{{.Names}}")
    return sorted(proc.stdout.decode().split())


def host_status(host):
    info = inspect(host)
    if info is None:
        return {"host": host, "state": "absent"}
    row = {"host": host, "state": info["State"]["Status"], "image": info["Config"]["Image"]}
    if not info["State"]["Running"]:
        return row
    script = r"""
        echo "hostname=$(hostname)"
        echo "systemd=$(systemctl is-system-running 2>/dev/null || true)"
        echo "engine=$(docker info -f '{{.ServerVersion}}' 2>/dev/null || echo down)"
        echo "containers=$(docker ps -q 2>/dev/null | wc -l)"
        if [ -e /usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1 ]; then
            nvidia-smi --query-gpu=index,name,memory.used,memory.total \
                --format=csv,noheader,nounits | sed 's/^/gpu=/'
        fi
        [ -x /usr/local/bin/nvidia-container-runtime-hook ] && echo hook=yes || echo hook=no
    """
    out = dexec(host, script, check=False).stdout.decode()
    row["gpus"] = []
    for line in out.splitlines():
        key, _sep, value = line.partition("=")
        if key == "gpu":
            row["gpus"].append(value.strip())
        elif key:
            row[key] = value.strip()
    return row


def print_status(rows, engine):
    print("engine: %s" % engine)
    if not rows:
        print("no lab hosts (make lab-up)")
    for row in rows:
        if row["state"] != "running":
            print("%-10s %s" % (row["host"], row["state"]))
            continue
        print(
            "%-10s %-8s hostname=%s systemd=%s engine=%s containers=%s hook=%s"
            % (
                row["host"],
                row["state"],
                row.get("hostname"),
                row.get("systemd"),
                row.get("engine"),
                row.get("containers"),
                row.get("hook"),
            )
        )
        for gpu in row["gpus"] or ["(no GPU: no NVML library)"]:
            print("%-10s   gpu %s" % ("", gpu))


def parallel(fn, items):
    results, errors = [], []
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(items))) as pool:
        futures = {pool.submit(fn, *item): item[0] for item in items}
        for future in concurrent.futures.as_completed(futures):
            try:
                results.append(future.result())
            except (LabError, subprocess.SubprocessError, OSError) as exc:
                errors.append("%s: %s" % (futures[future], exc))
    return results, errors


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] in (["--list"], ["--host"]):
        # Called as a script inventory (ansible -i lab/lab.py): --list, or --host HOST.
        argv = ["inventory", *argv]
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument(
        "command", choices=["up", "down", "status", "image", "write-state", "inventory"]
    )
    parser.add_argument("host", nargs="?")
    parser.add_argument("--inventory", default=os.path.join(ROOT, "inventory", "lab"))
    parser.add_argument("--hosts", help="comma-separated subset of the inventory's hosts")
    parser.add_argument(
        "--fleet", type=int, default=0, help="up/down/status: the generated hosts lab-fleet-01..N"
    )
    parser.add_argument("--recreate", action="store_true", help="up: replace running hosts")
    parser.add_argument("--json", action="store_true", help="status: JSON")
    parser.add_argument("--list", action="store_true", help="inventory: every running host")
    parser.add_argument("--host", dest="inventory_host", help="inventory: one host's variables")
    args = parser.parse_args(argv)

    if "DOCKER_HOST" not in os.environ:
        # Looking (status, down, inventory) never starts an engine; up and image may.
        looking = args.command in ("status", "down", "inventory")
        engine = subprocess.run(
            [os.path.join(LAB, "engine.sh"), "ensure"],
            check=False,
            capture_output=True,
            text=True,
            env=dict(os.environ, GPUFLEET_LAB_NO_START="1" if looking else "0"),
        )
        if engine.returncode == 3:
            if args.command == "inventory":
                print(json.dumps({} if args.inventory_host else {"_meta": {"hostvars": {}}}))
            else:
                print("engine: none running: the lab is down")
            return 0
        if engine.returncode != 0:
            print("lab: %s" % engine.stderr.strip(), file=sys.stderr)
            return 1
        os.environ["DOCKER_HOST"] = engine.stdout.strip()
    if args.command == "inventory":
        try:
            out = inventory_json(args.inventory, running_lab_hosts())
        except LabError as exc:
            print("lab: %s" % exc, file=sys.stderr)
            return 1
        if args.inventory_host:
            out = out["_meta"]["hostvars"].get(args.inventory_host, {})
        print(json.dumps(out, indent=2))
        return 0
    inventory = load_inventory(args.inventory)
    try:
        fleet = fleet_hosts(args.inventory, args.fleet) if args.fleet else {}
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    inventory.update(fleet)
    chosen = args.hosts.split(",") if args.hosts else sorted(fleet or inventory)
    unknown = [h for h in chosen if h not in inventory]
    try:
        if unknown and args.command in ("up", "write-state"):
            raise LabError("not in %s: %s" % (args.inventory, ", ".join(unknown)))
        if args.command == "image":
            for key, value in build_images().items():
                print("%s=%s" % (key, value))
        elif args.command == "up":
            t0 = time.time()
            images = build_images()
            done, errors = parallel(
                lambda h: up_host(h, inventory[h], images, args.recreate), [(h,) for h in chosen]
            )
            for line in sorted(done):
                print(line)
            if errors:
                raise LabError("; ".join(errors))
            print(
                "lab up: %d host(s) in %.1f s (DOCKER_HOST=%s)"
                % (len(chosen), time.time() - t0, os.environ["DOCKER_HOST"])
            )
        elif args.command == "down":
            hosts = (
                chosen
                if args.hosts or fleet
                else sorted(set(lab_containers()) | set(inventory))
            )
            done, errors = parallel(down_host, [(h,) for h in hosts])
            print("lab down: %s" % (", ".join(sorted(done)) or "nothing to remove"))
            if errors:
                raise LabError("; ".join(errors))
        elif args.command == "status":
            hosts = chosen if fleet else sorted(set(lab_containers()) | set(chosen))
            rows, errors = parallel(host_status, [(h,) for h in hosts])
            rows.sort(key=lambda r: r["host"])
            if args.json:
                print(json.dumps(rows, indent=2))
            else:
                print_status(rows, os.environ["DOCKER_HOST"])
        elif args.command == "write-state":
            write_file(args.host, STATE, state_text(args.host, inventory[args.host]))
    except LabError as exc:
        print("lab: %s" % exc, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
