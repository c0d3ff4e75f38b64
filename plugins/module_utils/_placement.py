# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Private module_utils of gpufleet.inference: placing services on GPUs.

Not a public API: the leading underscore says so. Pure functions, stdlib only, no
AnsibleModule: the ``gpu_placement`` module and filter wrap :func:`place` and
:func:`place_fleet`. Bad input raises ValueError naming the field and its value
(``services[2].vram_mib must be > 0; got: -5``). The same input always gives the same
output: every choice ends in a total order (the GPU's position), nothing is random.

Vocabulary
  unit       what a service is placed on: a GPU, or one MIG device of a GPU in MIG mode.
  usable     total - headroom - reserve - memory held by processes we do not manage.
  budget     the VRAM a service may take: ``vram_budget_mib``, else ``vram_mib``, else the
             estimate from its ``model`` (``_vram``). Cut to ``usable`` when a unit is smaller
             (``adjusted``), never silently.
  unhealthy  a GPU with ``healthy: false``, also one lost off the bus without an index (named
             by its bus id or UUID): never placed on; the first warnings name it and its errors.
  unknown    a GPU of unknown memory size has no known room (usable 0): it takes its pins and
             what no other unit has room for, each said. Live usage not read counts as 0, said.
  set        the N whole GPUs (never MIG devices, one host, one vendor) of a service with
             ``gpus: N`` > 1 (tensor parallel). Its budget is per GPU and held on each of
             them; its link is the slowest link between two of them (``LINKS``, from each
             GPU's ``topology`` fact; unknown when not reported).

Every strategy honours pins first (``gpu``: index, ``i:j`` for MIG device j of GPU i, or a
UUID), then places the other services one by one, each on the unit with the smallest key:

    (compute capability too low?, exclusivity broken?, does not fit?, [dedicated host
     unused?,] strategy key..., position)

so hard wishes are only given up when no unit grants them, and each give-up is a warning
("warn but allow"). A service spanning N GPUs is placed before the single-GPU
ones (it is the hardest to fit), on the set with the smallest key:

    (compute capability too low on one?, exclusivity broken on one?, does not fit on one?,
     [not all on a dedicated host?,] [isolation_first: GPUs already used,] slowest link,
     strategy key of the set..., positions)

among the sets of each host: all of them when there are at most ``SET_ENUMERATION_LIMIT``,
else one per start GPU, grown by adding the GPU with the smallest (hard wishes, fits,
slowest link to the GPUs taken, strategy key, position) until it has N.

Strategies:
  manual             pins only; an unpinned service goes where vram_based would put it, with
                     a warning.
  vram_based         largest budget first, onto the unit with the most free memory.
  latency_optimized  latency-critical services and LLMs first, onto the fastest unit (compute
                     capability, then memory, then power limit); the others onto the other
                     units first, keeping the fastest free for the critical path.
  isolation_first    each LLM alone on the largest empty unit; the others share the rest.
                     A non-LLM goes next to an LLM (warning) only when every unit it may use
                     holds one, or when that lets every service fit (``summary.repaired``);
                     otherwise it overflows the unit without an LLM with the most room left
                     (warning), and each LLM stays alone.
  balanced           largest budget first, onto the unit whose utilisation after placement is
                     lowest; then moves and swaps that lower the variance of utilisation.
manual, vram_based and balanced care about memory only: when their pass leaves a service
without room but a best-fit pass (fullest unit with room first) places everything, the
best-fit placement is kept (``summary.repaired``; balanced then evens it out). When best fit
fails too and the instance is small (``EXACT_*``), an exhaustive search looks for a placement
where every service fits, within the same hard wishes (``summary.exact_search``); not when
a service spans GPUs (its sets come from the strategy's rule and best fit only).
"""

from __future__ import annotations

import bisect
import fnmatch
import heapq
import itertools
import math
import operator
import re

from ansible_collections.gpufleet.inference.plugins.module_utils import _vram
from ansible_collections.gpufleet.inference.plugins.module_utils._common import is_int

STRATEGIES = ("manual", "vram_based", "latency_optimized", "isolation_first", "balanced")
DEFAULT_STRATEGY = "vram_based"
ENGINES = ("ollama", "vllm", "other")
LIVE_USAGE = ("account", "ignore")
# A pin to a GPU the facts do not list: fall back to an available GPU with a warning (the
# default), or fail before anything is placed (a typo in inventory).
PIN_NOT_FOUND = ("warn", "fail")
VISIBLE_DEVICES_BY = ("uuid", "index")
# Kept free on every unit: the CUDA context of each process and allocator fragmentation.
# 512 MiB turns a 4 GB RTX A400 (4,094 MiB) into a 3.5 GB budget.
DEFAULT_HEADROOM_MIB = 512
# How many runners-up an explanation lists (all of them are counted).
EXPLAIN_LIMIT = 8
# Above this many units (GPUs and MIG devices), a unit is chosen through an index of them
# (_Chooser) rather than by keying each: the same result, and faster from about this size on.
INDEX_MIN_UNITS = 32
# Balanced: local search only while services x units stays below this (it is O(S x U) a pass).
LOCAL_SEARCH_LIMIT = 200000
LOCAL_SEARCH_PASSES = 100
SWAP_LIMIT = 64
# Tensor parallel: at most this many GPUs for one service; a set of N GPUs of one host is
# chosen among all combinations while they are at most this many, else grown from each GPU.
MAX_SERVICE_GPUS = 64
SET_ENUMERATION_LIMIT = 128
# Links between two GPUs, fastest first (nvidia-smi topo -m: NV#, PIX/PXB, PHB, NODE, SYS).
LINKS = ("nvlink", "pcie_switch", "host_bridge", "numa", "system")
LINK_UNKNOWN = len(LINKS)
LINK_NAMES = (*LINKS, "unknown")
# A set whose slowest link is this or slower (host bridge, NUMA, system) is said.
SLOW_LINK = LINKS.index("host_bridge")

SERVICE_KEYS = (
    "name", "vram_mib", "model", "engine", "role", "latency_critical", "exclusive", "gpu",
    "min_compute_capability", "vram_budget_mib", "context_length", "parallel", "host",
    "node_selector", "gpus",
)
HOST_KEYS = ("name", "gpus", "labels", "dedicated")

# The argument spec of the gpu_placement module. The services_plan action validates the
# placement options it is given with the same spec, so a value is coerced (or refused) the same
# way whichever of the two places. Plain data: this file stays free of Ansible imports.
SERVICE_SPEC = dict(
    name=dict(type="str", required=True), vram_mib=dict(type="int"), model=dict(type="str"),
    engine=dict(type="str", choices=list(ENGINES)), role=dict(type="str"),
    latency_critical=dict(type="bool", default=False), exclusive=dict(type="bool", default=False),
    gpu=dict(type="raw"), min_compute_capability=dict(type="str"),
    vram_budget_mib=dict(type="int"), context_length=dict(type="int"), parallel=dict(type="int"),
    host=dict(type="str"), node_selector=dict(type="dict"), gpus=dict(type="int"),
)
CATALOG_SPEC = dict(
    name=dict(type="str", required=True), aliases=dict(type="list", elements="str"),
    vram_mib=dict(type="int"), weights_mib=dict(type="int"), params_b=dict(type="float"),
    quantization=dict(type="str"), bits_per_weight=dict(type="float"), layers=dict(type="int"),
    kv_heads=dict(type="int"), head_dim=dict(type="int"), context_length=dict(type="int"),
    role=dict(type="str"), source=dict(type="str"),
)
HOST_SPEC = dict(
    name=dict(type="str", required=True), gpus=dict(type="list", elements="dict", default=[]),
    labels=dict(type="dict", default={}), dedicated=dict(type="list", elements="str", default=[]),
)
ARGUMENT_SPEC = dict(
    gpus=dict(type="list", elements="dict"),
    hosts=dict(type="list", elements="dict", options=HOST_SPEC),
    services=dict(type="list", elements="dict", required=True, options=SERVICE_SPEC),
    strategy=dict(type="str", default=DEFAULT_STRATEGY, choices=list(STRATEGIES)),
    headroom_mib=dict(type="int", default=DEFAULT_HEADROOM_MIB),
    reserve_mib=dict(type="dict", default={}),
    live_usage=dict(type="str", default="account", choices=list(LIVE_USAGE)),
    managed_processes=dict(type="list", elements="str", default=[]),
    visible_devices_by=dict(type="str", default="uuid", choices=list(VISIBLE_DEVICES_BY)),
    catalog=dict(type="list", elements="dict", default=[], options=CATALOG_SPEC),
    pin_not_found=dict(type="str", default="warn", choices=list(PIN_NOT_FOUND)),
)
MUTUALLY_EXCLUSIVE = [("gpus", "hosts")]
REQUIRED_ONE_OF = [("gpus", "hosts")]
# The options of place() and place_fleet() besides the GPUs (or hosts) and the services.
OPTION_KEYS = ("strategy", "headroom_mib", "reserve_mib", "live_usage", "managed_processes",
               "visible_devices_by", "catalog", "pin_not_found")

_CC_RE = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*$", re.ASCII)
# ASCII digits only: str.isdigit() and int() also take '\u0661' or '\uff11', no GPU index.
_INDEX_RE = re.compile(r"^\s*[0-9]+\s*$", re.ASCII)
_MIG_KEY_RE = re.compile(r"^\s*([0-9]+)\s*:\s*([0-9]+)\s*$", re.ASCII)


# ---- small helpers ----------------------------------------------------------------------

def gb(mib):
    """MiB as GB (GiB, as GPUs are sold): 6963 -> '6.8', 4094 -> '4', 3582 -> '3.5'."""
    text = "%.1f" % (mib / 1024.0)
    return text[:-2] if text.endswith(".0") else text


def _parse_cc(value):
    if value is None:
        return None
    match = _CC_RE.match(str(value))
    if not match:
        return None
    return (int(match.group(1)), int(match.group(2) or 0))


def _cc_text(cc):
    return None if cc is None else "%d.%d" % cc


class _Unit:
    """One placeable unit (GPU or MIG device) and what has been put on it."""

    __slots__ = (
        "assigned",
        "cc",
        "dedicated",
        "exclusive",
        "foreign",
        "headroom",
        "host",
        "ident",
        "index",
        "key",
        "labels",
        "llms",
        "mig_index",
        "name",
        "notices",
        "order",
        "placeable",
        "power",
        "reason",
        "services",
        "speed_rank",
        "topology",
        "total",
        "usable",
        "uuid",
        "vendor",
        "vendor_index",
    )

    def __init__(self, **values):
        for slot in self.__slots__:
            setattr(self, slot, values.get(slot))
        self.notices = []
        self.assigned = 0
        self.services = []
        self.exclusive = None
        self.llms = 0

    @property
    def label(self):
        # A lost GPU has no index: its bus id, UUID or position in the facts names it.
        text = "GPU %s" % (self.index if self.index is not None else self.ident)
        if self.mig_index is not None:
            text += " MIG %s" % self.mig_index
        if self.host is not None:
            text = "%s %s" % (self.host, text)
        return text

    @property
    def remaining(self):
        return self.usable - self.assigned


class _Service:
    __slots__ = (
        "adjusted",
        "budget",
        "context_length",
        "count",
        "engine",
        "estimate",
        "exclusive",
        "explanation",
        "fallback",
        "host",
        "is_llm",
        "latency_critical",
        "min_cc",
        "model",
        "name",
        "need",
        "node_selector",
        "override",
        "parallel",
        "pin",
        "pinned",
        "pos",
        "requested",
        "role",
        "unit",
        "units",
    )

    def __init__(self, **values):
        for slot in self.__slots__:
            setattr(self, slot, values.get(slot))
        self.adjusted = False
        self.pinned = False
        self.fallback = False
        self.units = []

    @property
    def critical(self):
        return self.latency_critical or self.is_llm

    def reset(self):
        self.budget = self.requested
        self.unit = self.explanation = None
        self.units = []
        self.adjusted = self.pinned = self.fallback = False


# ---- input checks -----------------------------------------------------------------------

def _check_options(*, strategy, headroom_mib, reserve_mib, live_usage, managed_processes,
                   visible_devices_by, pin_not_found="warn"):
    if strategy not in STRATEGIES:
        raise ValueError("strategy must be one of %s; got: %r" % (", ".join(STRATEGIES), strategy))
    if not is_int(headroom_mib) or headroom_mib < 0:
        raise ValueError("headroom_mib must be an integer >= 0; got: %r" % (headroom_mib,))
    if headroom_mib > _vram.MAX_VRAM_MIB:
        raise ValueError("headroom_mib must be at most %d; got: %r"
                         % (_vram.MAX_VRAM_MIB, headroom_mib))
    if pin_not_found not in PIN_NOT_FOUND:
        raise ValueError("pin_not_found must be one of %s; got: %r"
                         % (", ".join(PIN_NOT_FOUND), pin_not_found))
    reserve = {}
    if reserve_mib is not None:
        if not isinstance(reserve_mib, dict):
            raise ValueError("reserve_mib must be a dict of GPU index or UUID -> MiB; got: %r"
                             % (reserve_mib,))
        for key, value in reserve_mib.items():
            if not is_int(value) or value < 0:
                raise ValueError("reserve_mib[%r] must be an integer >= 0; got: %r" % (key, value))
            if value > _vram.MAX_VRAM_MIB:
                raise ValueError("reserve_mib[%r] must be at most %d; got: %r"
                                 % (key, _vram.MAX_VRAM_MIB, value))
            reserve[str(key).strip().lower()] = value
    if live_usage not in LIVE_USAGE:
        raise ValueError("live_usage must be one of %s; got: %r"
                         % (", ".join(LIVE_USAGE), live_usage))
    patterns = managed_processes or []
    if not isinstance(patterns, list) or not all(isinstance(p, str) and p for p in patterns):
        raise ValueError("managed_processes must be a list of process name patterns; got: %r"
                         % (managed_processes,))
    if visible_devices_by not in VISIBLE_DEVICES_BY:
        raise ValueError("visible_devices_by must be one of %s; got: %r"
                         % (", ".join(VISIBLE_DEVICES_BY), visible_devices_by))
    return {
        "strategy": strategy, "headroom_mib": headroom_mib, "reserve_mib": reserve,
        "live_usage": live_usage, "managed_processes": [p.lower() for p in patterns],
        "visible_devices_by": visible_devices_by, "pin_not_found": pin_not_found,
    }


def _optional_mib(gpu, key, where):
    value = gpu.get(key)
    if value is not None and (not is_int(value) or value < 0):
        raise ValueError("%s.%s must be an integer >= 0 or null; got: %r" % (where, key, value))
    return value


def _unique_index(index, at, seen, position, siblings):
    """``index`` of the item at ``at`` (position ``position`` among ``siblings``): an integer
    >= 0 that no earlier sibling has (``seen``: index -> position, updated)."""
    if not is_int(index) or index < 0:
        raise ValueError("%s.index must be an integer >= 0; got: %r" % (at, index))
    if index in seen:
        raise ValueError("%s.index duplicates %s[%d]; got: %r"
                         % (at, siblings, seen[index], index))
    seen[index] = position


def _check_gpus(gpus, where):
    if not isinstance(gpus, list):
        raise ValueError("%s must be a list of GPU facts; got: %r" % (where, gpus))
    seen = {}
    for i, gpu in enumerate(gpus):
        at = "%s[%d]" % (where, i)
        if not isinstance(gpu, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, gpu))
        healthy = gpu.get("healthy")
        if healthy is not None and not isinstance(healthy, bool):
            raise ValueError("%s.healthy must be a boolean; got: %r" % (at, healthy))
        index = gpu.get("index")
        # A GPU that fell off the bus has no index: it is left out of placement (and said).
        if index is not None or healthy is not False:
            _unique_index(index, at, seen, i, where)
        for key in ("memory_total_mib", "memory_used_mib", "memory_free_mib",
                    "memory_reserved_mib", "vendor_index"):
            _optional_mib(gpu, key, at)
        for key in ("uuid", "pci_bus_id"):
            if gpu.get(key) is not None and not isinstance(gpu[key], str):
                raise ValueError("%s.%s must be a string or null; got: %r" % (at, key, gpu[key]))
        errors = gpu.get("errors")
        if errors is not None and (not isinstance(errors, list)
                                   or not all(isinstance(e, str) for e in errors)):
            raise ValueError("%s.errors must be a list of strings or null; got: %r"
                             % (at, errors))
        for key in ("processes", "mig_devices"):
            if gpu.get(key) is not None and not isinstance(gpu[key], list):
                raise ValueError("%s.%s must be a list; got: %r" % (at, key, gpu[key]))
        migs = {}
        for j, mig in enumerate(gpu.get("mig_devices") or []):
            if not isinstance(mig, dict):
                raise ValueError("%s.mig_devices[%d] must be a dict; got: %r" % (at, j, mig))
            mig_at = "%s.mig_devices[%d]" % (at, j)
            _optional_mib(mig, "memory_total_mib", mig_at)
            _optional_mib(mig, "memory_free_mib", mig_at)
            _unique_index(mig.get("index"), mig_at, migs, j, at + ".mig_devices")
        _check_topology(gpu.get("topology"), at)
    return gpus


def _check_topology(topology, at):
    """``topology`` of a GPU fact: null (not read) or a list of {index, link, ...} per peer."""
    if topology is None:
        return
    if not isinstance(topology, list):
        raise ValueError("%s.topology must be a list of peer links or null; got: %r"
                         % (at, topology))
    for k, peer in enumerate(topology):
        where = "%s.topology[%d]" % (at, k)
        if not isinstance(peer, dict):
            raise ValueError("%s must be a dict; got: %r" % (where, peer))
        if not is_int(peer.get("index")) or peer["index"] < 0:
            raise ValueError("%s.index must be an integer >= 0; got: %r"
                             % (where, peer.get("index")))
        if peer.get("link") not in LINKS:
            raise ValueError("%s.link must be one of %s; got: %r"
                             % (where, ", ".join(LINKS), peer.get("link")))


def _positive_int(service, key, where):
    value = service.get(key)
    if value is None:
        return None
    if not is_int(value):
        raise ValueError("%s.%s must be an integer; got: %r" % (where, key, value))
    if value <= 0:
        raise ValueError("%s.%s must be > 0; got: %r" % (where, key, value))
    return _vram.check_limit(value, key, where)


def _bool(service, key, where):
    value = service.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise ValueError("%s.%s must be a boolean; got: %r" % (where, key, value))
    return value


def _check_services(services, catalog, fleet):
    if not isinstance(services, list):
        raise ValueError("services must be a list; got: %r" % (services,))
    result = []
    names = {}
    for i, service in enumerate(services):
        at = "services[%d]" % i
        if not isinstance(service, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, service))
        unknown = sorted(set(service) - set(SERVICE_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        name = service.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("%s.name must be a non-empty string; got: %r" % (at, name))
        if name in names:
            raise ValueError("%s.name duplicates services[%d]; got: %r" % (at, names[name], name))
        names[name] = i
        engine = service.get("engine")
        if engine is None:
            engine = "other"
        if engine not in ENGINES:
            raise ValueError("%s.engine must be one of %s; got: %r"
                             % (at, ", ".join(ENGINES), engine))
        vram = _positive_int(service, "vram_mib", at)
        override = _positive_int(service, "vram_budget_mib", at)
        context = _positive_int(service, "context_length", at)
        parallel = _positive_int(service, "parallel", at)
        model = service.get("model")
        if model is not None and (not isinstance(model, str) or not model.strip()):
            raise ValueError("%s.model must be a non-empty string; got: %r" % (at, model))
        if model is not None:
            _vram.check_model_name(model, "%s.model" % at)
        if vram is None and model is None and override is None:
            raise ValueError("%s needs vram_mib, model or vram_budget_mib; got none of them" % at)
        estimate = None
        entry = None
        if model is not None:
            entry = _vram.lookup(catalog, model)
            try:
                estimate = _vram.estimate(model, catalog, engine=engine, context_length=context,
                                          parallel=parallel, what="%s.model" % at)
            except ValueError:
                if vram is None and override is None:
                    raise
        role = service.get("role")
        if role is None:
            if entry is not None and entry.get("role"):
                role = entry["role"]
            else:
                role = "llm" if engine in ("ollama", "vllm") else "other"
        if not isinstance(role, str) or not role.strip():
            raise ValueError("%s.role must be a non-empty string; got: %r" % (at, role))
        count = _gpu_count(service, at)
        pin = _check_pin(service.get("gpu"), count, at)
        if pin is not None and fleet and not service.get("host") and \
                any(_pin_is_index(p) for p in (pin if isinstance(pin, list) else [pin])):
            raise ValueError("%s.gpu is an index, which is ambiguous across hosts: give "
                             "%s.host too, or pin by UUID; got: %r" % (at, at, service["gpu"]))
        min_cc = service.get("min_compute_capability")
        parsed_cc = None
        if min_cc is not None:
            parsed_cc = _parse_cc(min_cc) if isinstance(min_cc, (str, int, float)) \
                and not isinstance(min_cc, bool) else None
            if parsed_cc is None:
                raise ValueError("%s.min_compute_capability must look like '8.0'; got: %r"
                                 % (at, min_cc))
        host = service.get("host")
        if host is not None and (not isinstance(host, str) or not host.strip()):
            raise ValueError("%s.host must be a non-empty string; got: %r" % (at, host))
        selector = service.get("node_selector") or {}
        if not isinstance(selector, dict):
            raise ValueError("%s.node_selector must be a dict of label -> value; got: %r"
                             % (at, selector))
        if estimate is not None and count > 1:
            estimate = dict(estimate, per_gpu=_vram.per_gpu(estimate, count, engine))
        need = vram if vram is not None else (
            estimate.get("per_gpu", estimate)["total_mib"] if estimate else None)
        budget = override if override is not None else need
        result.append(_Service(
            pos=i, name=name, engine=engine, role=role.strip(), is_llm=role.strip() == "llm",
            latency_critical=_bool(service, "latency_critical", at),
            exclusive=_bool(service, "exclusive", at), pin=pin, min_cc=parsed_cc,
            need=need, budget=budget, requested=budget, override=override is not None,
            estimate=estimate, count=count, context_length=context, parallel=parallel, host=host,
            node_selector={str(k): str(v) for k, v in sorted(selector.items())},
            model=model,
        ))
    return result


def _gpu_count(service, at):
    """``gpus`` of a service: how many whole GPUs it spans (1 unless said)."""
    count = service.get("gpus")
    if count is None:
        return 1
    if not is_int(count) or not 1 <= count <= MAX_SERVICE_GPUS:
        raise ValueError("%s.gpus must be an integer 1-%d; got: %r"
                         % (at, MAX_SERVICE_GPUS, count))
    return count


def _bad_pin(pin):
    bad = isinstance(pin, bool) or not isinstance(pin, (int, str))
    bad = bad or (isinstance(pin, int) and pin < 0)
    bad = bad or (isinstance(pin, str) and any(ord(c) > 127 for c in pin))
    return bad or (isinstance(pin, str) and not pin.strip())


def _check_pin(pin, count, at):
    """``gpu`` of a service: one pin, or (``gpus`` N > 1) a list of N distinct whole-GPU pins."""
    if pin is None:
        return None
    if count == 1:
        if _bad_pin(pin):
            raise ValueError("%s.gpu must be a GPU index, 'i:j' (MIG) or a UUID; got: %r"
                             % (at, pin))
        return pin
    if not isinstance(pin, list) or len(pin) != count:
        raise ValueError("%s.gpu must be a list of %d GPU pins (index or UUID), one per GPU of "
                         "gpus: %d; got: %r" % (at, count, count, pin))
    seen = set()
    for k, one in enumerate(pin):
        text = str(one).strip().lower()
        if _bad_pin(one) or _MIG_KEY_RE.match(text) or text.startswith("mig-"):
            raise ValueError("%s.gpu[%d] must be a whole GPU's index or UUID (tensor parallel "
                             "takes no MIG device); got: %r" % (at, k, one))
        key = str(int(text)) if _pin_is_index(one) else text
        if key in seen:
            raise ValueError("%s.gpu[%d] names a GPU twice; got: %r" % (at, k, pin))
        seen.add(key)
    return list(pin)


def _pins(service):
    """The pins of ``service``: [] without one, one per GPU of a tensor parallel service."""
    if service.pin is None:
        return []
    return list(service.pin) if isinstance(service.pin, list) else [service.pin]


def _pin_text(service):
    return ", ".join(str(p) for p in _pins(service))


def _pin_is_index(pin):
    return is_int(pin) or (isinstance(pin, str) and _INDEX_RE.match(pin) is not None)


# ---- units ------------------------------------------------------------------------------

def _managed(process, patterns):
    name = str(process.get("name") or "").lower()
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(base, p) for p in patterns)


def _foreign_mib(gpu, total, opts):
    """Memory held by processes we do not manage (0 with live_usage=ignore)."""
    if opts["live_usage"] == "ignore" or total is None:
        return 0
    if gpu.get("memory_free_mib") is not None:
        unavailable = total - gpu["memory_free_mib"]
    else:
        unavailable = (gpu.get("memory_used_mib") or 0) + (gpu.get("memory_reserved_mib") or 0)
    managed = sum(p.get("used_memory_mib") or 0 for p in gpu.get("processes") or []
                  if isinstance(p, dict) and _managed(p, opts["managed_processes"]))
    return max(unavailable - managed, 0)


def _reserve(opts, index, uuid):
    reserve = opts["reserve_mib"]
    if uuid and uuid.lower() in reserve:
        return reserve[uuid.lower()]
    return reserve.get(str(index), 0)


def _unhealthy(unit, gpu, errors):
    """The warning for a GPU left out of placement, naming it (UUID, bus id) and its errors."""
    detail = [gpu.get("name")] if gpu.get("name") else []
    if unit.uuid and unit.ident != unit.uuid:
        detail.append("uuid %s" % unit.uuid)
    subject = unit.label + (" (%s)" % ", ".join(detail) if detail else "")
    return "%s is unhealthy and left out of placement: %s." % (subject, errors)


def _memory_notices(unit, opts, free, used=None):
    """Unknown memory size, or unknown live usage counted as nothing: said, never assumed."""
    if unit.total is None:
        unit.notices.append(("memory_unknown", "%s memory size unknown: placement cannot check "
                             "what fits on it; it takes the services pinned to it and those no "
                             "other GPU has room for." % unit.label))
    elif opts["live_usage"] == "account" and free is None and used is None:
        unit.notices.append(("live_usage_unknown", "%s live memory use unknown (neither used nor "
                             "free memory was read): counted as %d MiB held by other processes."
                             % (unit.label, unit.foreign)))


def _units(gpus, opts, host=None, labels=None, dedicated=None):
    units = []
    # By index; GPUs without one (lost) last, in the order of the facts.
    ordered = sorted(enumerate(gpus), key=lambda item: (
        item[1].get("index") is None, item[1].get("index") or 0, item[0]))
    for position, gpu in ordered:
        index = gpu.get("index")
        common = {
            "host": host, "index": index, "vendor": gpu.get("vendor") or "nvidia",
            "vendor_index": gpu.get("vendor_index"),
            "ident": None if index is not None else (
                gpu.get("pci_bus_id") or gpu.get("uuid") or "#%d" % position),
            "cc": _parse_cc(gpu.get("compute_capability")),
            "power": gpu.get("power_limit_w") or 0, "labels": labels or {},
            "dedicated": dedicated or [],
        }
        healthy = gpu.get("healthy") is not False
        mig_on = str(gpu.get("mig_mode") or "").strip().lower() == "enabled"
        total = gpu.get("memory_total_mib")
        reason = errors = None
        if not healthy:
            errors = "; ".join(str(e) for e in gpu.get("errors") or []) or "no detail"
            reason = "unhealthy: %s" % errors
        elif mig_on:
            reason = "MIG mode is enabled: services go on its MIG devices"
            if not gpu.get("mig_devices"):
                reason = "MIG mode is enabled and it has no MIG devices"
        # A GPU of unknown memory size stays placeable with no known room (usable 0): pins
        # go there, others only when no other unit has room; both are said.
        unit = _make_unit(common, opts, key=None if index is None else str(index),
                          mig_index=None, uuid=gpu.get("uuid"), name=gpu.get("name"),
                          total=total, foreign=_foreign_mib(gpu, total, opts), reason=reason)
        if gpu.get("topology") is not None:
            unit.topology = {peer["index"]: LINKS.index(peer["link"])
                             for peer in gpu["topology"]}
        units.append(unit)
        if not healthy:
            unit.notices.append(("gpu_unhealthy", _unhealthy(unit, gpu, errors)))
        elif not mig_on:
            _memory_notices(unit, opts, gpu.get("memory_free_mib"), gpu.get("memory_used_mib"))
        if mig_on and healthy:
            for mig in sorted(gpu.get("mig_devices") or [], key=lambda m: m["index"]):
                mig_total = mig.get("memory_total_mib")
                mig_index = mig["index"]
                foreign = 0
                if opts["live_usage"] == "account" and mig_total is not None \
                        and mig.get("memory_free_mib") is not None:
                    foreign = max(mig_total - mig["memory_free_mib"], 0)
                mig_unit = _make_unit(
                    common, opts, key="%s:%s" % (index, mig_index), mig_index=mig_index,
                    uuid=mig.get("uuid"), name=mig.get("name"), total=mig_total,
                    foreign=foreign, reason=None)
                units.append(mig_unit)
                _memory_notices(mig_unit, opts, mig.get("memory_free_mib"))
    return units


def _notices(result, units):
    """``result`` with what the facts left unknown or unhealthy said first, once per unit."""
    issues = [{"code": code, "service": None, "gpu": unit.label, "message": message}
              for unit in units for code, message in unit.notices]
    result["issues"] = issues + result["issues"]
    result["warnings"] = [issue["message"] for issue in issues] + result["warnings"]
    result["summary"]["warning_count"] = len(result["issues"])
    return result


def unhealthy_warnings(gpus):
    """The warnings :func:`place` gives first for the unhealthy (or lost) GPUs of ``gpus``, in
    its words, for a caller that says so without placing (preflight)."""
    _check_gpus(gpus, "gpus")
    opts = _check_options(strategy=DEFAULT_STRATEGY, headroom_mib=DEFAULT_HEADROOM_MIB,
                          reserve_mib=None, live_usage="ignore", managed_processes=None,
                          visible_devices_by="uuid")
    return [message for unit in _units(gpus, opts) for code, message in unit.notices
            if code == "gpu_unhealthy"]


def _make_unit(common, opts, *, key, mig_index, uuid, name, total, foreign, reason):
    headroom = opts["headroom_mib"] + (_reserve(opts, key, uuid) if key is not None else 0)
    usable = max((total or 0) - headroom - foreign, 0)
    return _Unit(key=key, mig_index=mig_index, uuid=uuid, name=name, total=total,
                 foreign=foreign, headroom=headroom, usable=usable,
                 placeable=reason is None, reason=reason, **common)


def _rank_speed(units):
    """Dense rank, 0 = fastest: compute capability, then memory, then power limit."""
    def speed(u):
        return (u.cc or (0, 0), u.total or 0, u.power or 0)
    keys = sorted({speed(u) for u in units if u.placeable}, reverse=True)
    rank = {key: i for i, key in enumerate(keys)}
    for position, unit in enumerate(units):
        unit.order = position
        unit.speed_rank = rank.get(speed(unit), len(keys))


# ---- choosing ---------------------------------------------------------------------------

def _hard_reject(service, unit):
    """Why ``unit`` can never take ``service``, or None."""
    if not unit.placeable:
        return unit.reason
    if service.host is not None and unit.host != service.host:
        return "on host %s; the service asks for host %s" % (unit.host, service.host)
    for label, value in service.node_selector.items():
        if str(unit.labels.get(label)) != value:
            return "host %s has %s=%s; node_selector wants %s" % (
                unit.host, label, unit.labels.get(label), value)
    if unit.dedicated and not _allowed_on_dedicated(service, unit):
        return "host %s is dedicated to %s" % (unit.host, ", ".join(unit.dedicated))
    return None


def _allowed_on_dedicated(service, unit):
    return bool({service.engine, service.role, service.name} & set(unit.dedicated))


def _cc_rank(service, unit):
    if service.min_cc is None:
        return 0
    if unit.cc is None:
        return 1
    return 2 if unit.cc < service.min_cc else 0


def _exclusive_conflict(service, unit):
    if unit.exclusive is not None and unit.exclusive != service.name:
        return 1
    return 1 if service.exclusive and unit.services else 0


def _mode(strategy, service, repair=False):
    """Which scoring rule a service is placed by under ``strategy``."""
    if strategy == "isolation_first":
        if service.is_llm:
            return "isolated"
        return "sharing" if repair else "shared"
    if repair:
        return "best_fit"
    if strategy == "latency_optimized":
        return "critical" if service.critical else "noncritical"
    if strategy == "balanced":
        return "balanced"
    return "most_free"


def _score(mode, service, unit, fits):
    remaining = unit.remaining
    if mode == "balanced":
        if fits and unit.usable > 0:
            return ((unit.assigned + service.budget) / float(unit.usable),)
        return (float(-remaining),)
    if mode == "best_fit":
        if fits and unit.usable > 0:
            return (-(unit.assigned + service.budget) / float(unit.usable),)
        return (float(-remaining),)
    if mode == "critical":
        return (unit.speed_rank, -remaining)
    if mode == "noncritical":
        return (1 if unit.speed_rank == 0 else 0, -remaining)
    if mode == "isolated":
        return (1 if unit.services else 0, -unit.usable)
    if mode in ("shared", "sharing"):
        return (1 if unit.llms else 0, -remaining)
    return (-remaining,)


def _isolation_conflict(mode, unit):
    """isolation_first: a unit holding an LLM is kept for it (1), whatever room it has left."""
    return 1 if mode == "shared" and unit.llms else 0


def _key(mode, service, unit, fleet_dedicated):
    fits = service.budget <= unit.remaining
    # Second: 2 breaks an exclusive wish, 1 puts a service next to an isolated LLM; both come
    # before room, so a non-LLM overflows a unit without an LLM rather than join one.
    conflict = 2 if _exclusive_conflict(service, unit) else _isolation_conflict(mode, unit)
    prefix = (_cc_rank(service, unit), conflict, 0 if fits else 1)
    if fleet_dedicated:
        prefix += (0 if unit.dedicated else 1,)
    return prefix + _score(mode, service, unit, fits) + (unit.order,)


_RULES = {
    "most_free": "the unit with the most free memory (largest budgets placed first)",
    "balanced": "the unit with the lowest utilisation after placement (largest budgets first)",
    "best_fit": "best fit, the fullest unit that still has room (largest budgets first): the "
                "strategy's own rule left a service without room, best fit places them all",
    "critical": "latency-critical or LLM: the fastest unit with room (compute capability, "
                "memory, power limit)",
    "noncritical": "not latency-critical: the most free memory, keeping the fastest unit for "
                   "the critical path",
    "isolated": "LLM: the largest unit holding nothing else",
    "shared": "not an LLM: the most free memory on a unit without an LLM, where it overflows "
              "least when it fits on none",
    "sharing": "not an LLM: the most free memory on a unit without an LLM, next to an LLM "
               "where none has room: keeping each LLM alone left a service without room, "
               "sharing places them all",
}


def _why_not(service, unit, keys, mode, fleet_dedicated):
    """One sentence: why ``unit`` lost to the chosen unit; ``keys`` = (its key, the best key)."""
    key, best_key = keys
    if key[0] > best_key[0]:
        if key[0] == 1:
            return "compute capability unknown; %s needs %s" % (service.name,
                                                                _cc_text(service.min_cc))
        return "compute capability %s < %s required" % (_cc_text(unit.cc),
                                                        _cc_text(service.min_cc))
    if key[1] > best_key[1]:
        if key[1] == 1:
            return "holds an LLM (%s), which isolation_first keeps alone" % ", ".join(
                s.name for s in unit.services if s.is_llm)
        if unit.exclusive is not None:
            return "held exclusively by %s" % unit.exclusive
        return "%s wants a unit of its own; this one holds %s" % (
            service.name, ", ".join(s.name for s in unit.services))
    if key[2] > best_key[2]:
        return "not enough room: needs %d MiB, %d MiB left" % (service.budget, unit.remaining)
    offset = 3
    if fleet_dedicated:
        if key[3] > best_key[3]:
            return "a dedicated host that admits %s comes first" % service.name
        offset = 4
    if mode == "balanced":
        return "utilisation after placement %.3f, higher" % key[offset] if key[2] == 0 \
            else "less room left (%d MiB)" % unit.remaining
    if mode == "best_fit":
        return "utilisation after placement %.3f, lower" % -key[offset] if key[2] == 0 \
            else "less room left (%d MiB)" % unit.remaining
    if mode == "critical" and key[offset] > best_key[offset]:
        return "slower (speed rank %d)" % unit.speed_rank
    if mode == "noncritical" and key[offset] > best_key[offset]:
        return "the fastest unit, kept for latency-critical services"
    if mode == "isolated" and key[offset] > best_key[offset]:
        return "already holds %s" % ", ".join(s.name for s in unit.services)
    if mode == "isolated":
        return "smaller (%d MiB usable)" % unit.usable
    if mode in ("shared", "sharing") and key[offset] > best_key[offset]:
        return "holds an LLM, kept isolated"
    if key[:-1] == best_key[:-1]:
        return "same score; the earlier unit wins"
    return "less free memory (%d MiB left)" % unit.remaining


def _choose(service, units, mode, fleet_dedicated):
    """The best unit for ``service`` and the explanation of the choice, or (None, expl)."""
    hard = []
    scored = []
    for unit in units:
        reason = _hard_reject(service, unit)
        if reason is not None:
            hard.append((unit, reason))
            continue
        scored.append((_key(mode, service, unit, fleet_dedicated), unit))
    if not scored:
        return None, {"rejected": [{"gpu": u.label, "reason": r} for u, r in hard[:EXPLAIN_LIMIT]],
                      "rejected_total": len(hard)}
    top = heapq.nsmallest(EXPLAIN_LIMIT + 1, scored, key=lambda item: item[0])
    best_key, best = top[0]
    rejected = [
        {"gpu": u.label, "reason": _why_not(service, u, (k, best_key), mode, fleet_dedicated)}
        for k, u in top[1:]
    ]
    room = max(EXPLAIN_LIMIT - len(rejected), 0)
    rejected += [{"gpu": u.label, "reason": r} for u, r in hard[:room]]
    explanation = {
        "rule": _RULES[mode], "best_key": best_key,
        "rejected": rejected, "rejected_total": len(scored) - 1 + len(hard),
    }
    return best, explanation


# _choose at fleet size. _choose keys every unit for every service: O(services x units), 5
# million keys for 5,000 services on 1,000 GPUs. _Chooser gives the same answer (the same
# unit, the same runners-up in the same order, the same explanation) from a few units per
# service. It files the placeable units in groups whose units _hard_reject cannot tell apart
# and whose keys differ only in room and position:
#   bucket  the same usable memory and, where a service or the strategy looks at them, the
#           same speed rank, compute capability, host, labels; the same dedication;
#   state   holds an exclusive service?, holds services?, holds an LLM? (each where a key
#           looks at it: a pending service is never the one holding a unit exclusively)
# Within a group a key is (constant part, does not fit, score, position) with the score a
# function of the memory assigned (the usable memory is the same): rising with it for most
# free, balanced, critical, noncritical and shared (less room, higher utilisation), falling
# while it fits for best fit (the fullest unit with room first), none for isolated. Each
# group keeps its units sorted by (assigned, position), so its units come out in key order
# by walking that list (_in_key_order); merging the groups' walks by their real keys gives
# the smallest keys of all units, of which an explanation needs EXPLAIN_LIMIT + 1.


class _Chooser:
    """_choose(service, units, mode, fleet_dedicated) for the units of one pass: the same
    result. _assign tells it (``changed``) when a unit gets a service."""

    def __init__(self, units, services, strategy):
        self.units = units
        self.buckets = []  # [(a unit of the bucket, {state: group})]
        self.filed = {}  # unit order -> (the bucket's groups, the unit's group, its entry)
        by_speed = strategy == "latency_optimized"
        by_cc = any(s.min_cc is not None for s in services)
        by_host = any(s.host is not None for s in services)
        by_labels = any(s.node_selector for s in services)
        # What of a unit's state the keys look at: whether an exclusive service holds it;
        # whether it holds services (for an exclusive service, and isolation_first's LLMs);
        # whether it holds an LLM (isolation_first's other services).
        self.by_services = strategy == "isolation_first" or any(s.exclusive for s in services)
        self.by_llms = strategy == "isolation_first"
        members = {}
        for unit in units:
            if unit.placeable:  # else _hard_reject rejects it whatever the service
                members.setdefault((
                    unit.usable, unit.speed_rank if by_speed else None,
                    unit.cc if by_cc else None, unit.host if by_host else None,
                    tuple(sorted(unit.labels.items())) if by_labels else None,
                    tuple(unit.dedicated)), []).append(unit)
        for bucket in members.values():
            groups = {}
            self.buckets.append((bucket[0], groups))
            for unit in bucket:
                self.filed[unit.order] = (groups, None, None)
                self.changed(unit)

    def changed(self, unit):
        """File ``unit`` again: its assigned memory or what it holds changed."""
        groups, group, entry = self.filed.get(unit.order, (None, None, None))
        if groups is None:
            return
        if group is not None:
            del group[bisect.bisect_left(group, entry)]
        state = (unit.exclusive is not None, self.by_services and bool(unit.services),
                 self.by_llms and unit.llms > 0)
        group = groups.setdefault(state, [])
        entry = (unit.assigned, unit.order, unit)
        bisect.insort(group, entry)
        self.filed[unit.order] = (groups, group, entry)

    def choose(self, service, mode, fleet_dedicated):
        """(unit, explanation) as ``_choose(service, self.units, mode, fleet_dedicated)``."""
        heap = []
        for first, groups in self.buckets:
            if _hard_reject(service, first) is not None:
                continue
            for group in groups.values():
                if group:
                    self._push(heap, _in_key_order(group, mode, service), service, mode,
                               fleet_dedicated)
        if not heap:
            hard = self._hard(service, EXPLAIN_LIMIT)
            return None, {"rejected": hard, "rejected_total": len(self.units)}
        top = []
        while heap and len(top) <= EXPLAIN_LIMIT:
            key, _order, unit, walk = heapq.heappop(heap)
            top.append((key, unit))
            self._push(heap, walk, service, mode, fleet_dedicated)
        best_key, best = top[0]
        rejected = [
            {"gpu": u.label, "reason": _why_not(service, u, (k, best_key), mode, fleet_dedicated)}
            for k, u in top[1:]
        ]
        rejected += self._hard(service, max(EXPLAIN_LIMIT - len(rejected), 0))
        explanation = {
            "rule": _RULES[mode], "best_key": best_key,
            "rejected": rejected, "rejected_total": len(self.units) - 1,
        }
        return best, explanation

    @staticmethod
    def _push(heap, walk, service, mode, fleet_dedicated):
        unit = next(walk, None)
        if unit is not None:
            heapq.heappush(heap, (_key(mode, service, unit, fleet_dedicated), unit.order, unit,
                                  walk))

    def _hard(self, service, limit):
        """The first ``limit`` units _hard_reject rejects, with the reason (as _choose)."""
        hard = []
        for unit in self.units:
            if len(hard) >= limit:
                break
            reason = _hard_reject(service, unit)
            if reason is not None:
                hard.append({"gpu": unit.label, "reason": reason})
        return hard


class _EveryUnit:
    """_choose itself: where an explanation lists (nearly) every unit, an index saves nothing."""

    def __init__(self, units):
        self.units = units

    def changed(self, unit):
        """Nothing filed, nothing to file again."""

    def choose(self, service, mode, fleet_dedicated):
        return _choose(service, self.units, mode, fleet_dedicated)


def _chooser(state, services):
    """The pass's chooser, made at its first choice (after the pins are placed): _Chooser
    where there are more units than INDEX_MIN_UNITS, else _choose itself."""
    if state.chooser is None:
        state.chooser = _Chooser(state.units, services, state.opts["strategy"]) \
            if len(state.units) > INDEX_MIN_UNITS else _EveryUnit(state.units)
    return state.chooser


_POSITION = operator.itemgetter(1)


def _in_key_order(group, mode, service):
    """The units of ``group`` (entries (assigned, position, unit) in order, one usable size)
    in the order of their _key for ``service`` under ``mode``."""
    usable = group[0][2].usable
    # The entries whose unit has room: assigned <= usable - budget, a prefix of the group.
    cut = bisect.bisect_right(group, (usable - service.budget, math.inf))
    if mode == "isolated":  # (does not fit, position)
        for part in (group[:cut], group[cut:]):
            # One assigned size (say all empty): already by position.
            ordered = sorted(part, key=_POSITION) if part and part[0][0] != part[-1][0] \
                else part
            yield from (unit for _a, _o, unit in ordered)
        return
    if mode == "best_fit" and usable > 0:
        # Those with room, the fullest first (the same assigned memory: by position), then
        # the others as in every other mode.
        end = cut
        while end > 0:
            start = bisect.bisect_left(group, (group[end - 1][0],), 0, end)
            yield from (unit for _a, _o, unit in group[start:end])
            end = start
        yield from (unit for _a, _o, unit in group[cut:])
        return
    yield from (unit for _a, _o, unit in group)


def _choose_planned(state, service, target):
    """``target`` (from the exhaustive search) and why each other unit was not used."""
    soft = []
    hard = []
    for unit in state.units:
        if unit is target:
            continue
        reason = _hard_reject(service, unit)
        if reason is not None:
            hard.append({"gpu": unit.label, "reason": reason})
            continue
        rank = _cc_rank(service, unit)
        if rank > _cc_rank(service, target):
            reason = "compute capability unknown; %s needs %s" % (
                service.name, _cc_text(service.min_cc)) if rank == 1 else \
                "compute capability %s < %s required" % (_cc_text(unit.cc),
                                                         _cc_text(service.min_cc))
        elif _exclusive_conflict(service, unit):
            reason = "held exclusively by %s" % unit.exclusive if unit.exclusive is not None \
                else "%s wants a unit of its own; this one holds %s" % (
                    service.name, ", ".join(s.name for s in unit.services))
        elif service.budget > unit.remaining:
            reason = "not enough room: needs %d MiB, %d MiB left" % (service.budget,
                                                                     unit.remaining)
        else:
            reason = "%d MiB left, but the complete fit found places %s on %s" % (
                unit.remaining, service.name, target.label)
        soft.append({"gpu": unit.label, "reason": reason})
    rule = "exhaustive search, %s: the strategy's own rule and best fit each left a service " \
        "without room; this placement fits every service" % (
            "the fit with the lowest variance of utilisation found"
            if state.opts["strategy"] == "balanced"
            else "the first fit found trying the units with the most free memory first")
    explanation = {
        "rule": rule, "rejected": (soft + hard)[:EXPLAIN_LIMIT],
        "rejected_total": len(soft) + len(hard),
        "notes": ["the search visited %d of at most %d nodes"
                  % (state.plan_nodes, EXACT_NODE_BUDGET)],
    }
    return target, explanation


# ---- choosing N GPUs (tensor parallel) ----------------------------------------------------

def _link(one, other):
    """Rank of the link between two GPUs (in LINKS; LINK_UNKNOWN when neither reports it)."""
    for unit, peer in ((one, other), (other, one)):
        if unit.topology is not None and peer.index in unit.topology:
            return unit.topology[peer.index]
    return LINK_UNKNOWN


def _set_link(units):
    """The slowest link between two GPUs of ``units`` (None for one GPU)."""
    ranks = [_link(a, b) for i, a in enumerate(units) for b in units[i + 1:]]
    return max(ranks) if ranks else None


def _set_label(units):
    """'GPU 2, 3' (with the host in front under place_fleet); a unit's label for one."""
    if len(units) == 1:
        return units[0].label
    text = "GPU " + ", ".join(str(u.index) for u in units)
    return text if units[0].host is None else "%s %s" % (units[0].host, text)


def _set_score(mode, service, units, fits):
    """The strategy's own preference among sets (lower first), as _score among units."""
    tight = min(u.remaining for u in units)
    if mode in ("balanced", "best_fit"):
        if fits and all(u.usable > 0 for u in units):
            after = [(u.assigned + service.budget) / float(u.usable) for u in units]
            return (max(after),) if mode == "balanced" else (-sum(after) / len(after),)
        return (float(-tight),)
    if mode == "critical":
        return (max(u.speed_rank for u in units), -tight)
    if mode == "noncritical":
        return (sum(1 for u in units if u.speed_rank == 0), -tight)
    if mode == "isolated":
        return (sum(1 for u in units if u.services), -min(u.usable for u in units))
    if mode in ("shared", "sharing"):
        return (sum(1 for u in units if u.llms), -tight)
    return (-tight, -sum(u.remaining for u in units))


def _set_key(mode, service, units, keys, fleet_dedicated):
    """(worst compute capability, worst conflict, does not fit on one, [not all dedicated,]
    slowest link, strategy score..., positions); ``keys`` caches _key per unit order."""
    own = [keys[u.order] for u in units]
    prefix = tuple(max(k[i] for k in own) for i in range(3))
    if fleet_dedicated:
        prefix += (0 if all(u.dedicated for u in units) else 1,)
    if mode == "isolated":  # isolation_first: GPUs holding nothing come before a fast link
        prefix += (sum(1 for u in units if u.services),)
    return (*prefix, _set_link(units), *_set_score(mode, service, units, not prefix[2]),
            tuple(u.order for u in units))


def _grow(start, members, count, keys, mode):
    """A set of ``count`` from ``start``: each time the member with the smallest (hard wishes,
    fits, [isolation_first: used,] slowest link to those taken, strategy key, position)."""
    chosen = [start]
    rest = [u for u in members if u is not start]
    cut = 4 if mode == "isolated" else 3
    while len(chosen) < count:
        pick = min(rest, key=lambda u, taken=tuple(chosen): (
            keys[u.order][:cut], max(_link(u, t) for t in taken), keys[u.order][cut:]))
        chosen.append(pick)
        rest.remove(pick)
    return sorted(chosen, key=lambda u: u.order)


def _why_not_set(service, units, keys, mode, fleet_dedicated):
    """One sentence: why the set ``units`` lost; ``keys`` = (its key, the best key)."""
    key, best_key = keys
    if key[0] > best_key[0]:
        return "compute capability too low or unknown on one of them; %s needs %s" % (
            service.name, _cc_text(service.min_cc))
    if key[1] > best_key[1]:
        held = [u.label for u in units if u.services]
        return "%s holds %s, which %s" % (
            ", ".join(held), ", ".join(s.name for u in units for s in u.services),
            "isolation_first keeps alone" if key[1] == 1 else "rules out sharing")
    if key[2] > best_key[2]:
        short = [u for u in units if service.budget > u.remaining]
        return "not enough room on %s: needs %d MiB per GPU, %d MiB left" % (
            short[0].label, service.budget, short[0].remaining)
    offset = 3
    if fleet_dedicated:
        if key[3] > best_key[3]:
            return "a dedicated host that admits %s comes first" % service.name
        offset = 4
    if mode == "isolated":
        if key[offset] > best_key[offset]:
            return "already holds %s" % ", ".join(s.name for u in units for s in u.services)
        offset += 1
    if key[offset] > best_key[offset]:
        return "slower link between them (%s; the chosen GPUs: %s)" % (
            LINK_NAMES[key[offset]], LINK_NAMES[best_key[offset]])
    if key[offset + 1:-1] == best_key[offset + 1:-1]:
        return "same score; the earlier GPUs win"
    return {
        "balanced": "higher utilisation after placement on its fullest GPU",
        "best_fit": "more room left: best fit takes the fullest GPUs with room",
        "critical": "slower GPUs (speed rank up to %d)" % max(u.speed_rank for u in units),
        "noncritical": "takes the fastest GPU, kept for latency-critical services",
        "isolated": "already holds %s" % ", ".join(s.name for u in units for s in u.services),
        "shared": "holds an LLM, kept isolated",
        "sharing": "holds an LLM, kept isolated",
    }.get(mode, "less free memory on its fullest GPU (%d MiB left)"
          % min(u.remaining for u in units))


def _choose_set(service, units, mode, fleet_dedicated):
    """The best set of ``service.count`` whole GPUs of one host, one vendor, and the
    explanation; or (None, explanation with ``most``: the most GPUs one host offers it)."""
    count = service.count
    hard = []
    groups = {}
    for unit in units:
        reason = _hard_reject(service, unit)
        if reason is None and unit.mig_index is not None:
            reason = "a MIG device; a service spanning GPUs takes whole GPUs"
        if reason is not None:
            hard.append((unit, reason))
            continue
        groups.setdefault((unit.host, unit.vendor), []).append(unit)
    keys = {u.order: _key(mode, service, u, False) for group in groups.values() for u in group}
    candidates = {}
    for members in groups.values():
        if len(members) < count:
            continue
        if math.comb(len(members), count) <= SET_ENUMERATION_LIMIT:
            sets = [list(c) for c in itertools.combinations(members, count)]
        else:
            sets = [_grow(start, members, count, keys, mode) for start in members]
        for chosen in sets:
            ident = tuple(u.order for u in chosen)
            if ident not in candidates:
                candidates[ident] = (_set_key(mode, service, chosen, keys, fleet_dedicated),
                                     chosen)
    rejected = [{"gpu": u.label, "reason": r} for u, r in hard[:EXPLAIN_LIMIT]]
    if not candidates:
        most = max(groups.values(), key=len, default=[])
        return None, {"rejected": rejected, "rejected_total": len(hard), "most": most}
    ranked = sorted(candidates.values(), key=lambda item: item[0])
    best_key, best = ranked[0]
    rejected = [{"gpu": _set_label(chosen),
                 "reason": _why_not_set(service, chosen, (k, best_key), mode, fleet_dedicated)}
                for k, chosen in ranked[1:EXPLAIN_LIMIT + 1]]
    room = max(EXPLAIN_LIMIT - len(rejected), 0)
    rejected += [{"gpu": u.label, "reason": r} for u, r in hard[:room]]
    explanation = {
        "rule": "%d whole GPUs of one host (tensor parallel): all with room first, then the "
                "fastest link between them (their slowest pair), then %s" % (count,
                                                                             _RULES[mode]),
        "best_key": best_key, "rejected": rejected,
        "rejected_total": len(ranked) - 1 + len(hard),
    }
    return best, explanation


# ---- assigning --------------------------------------------------------------------------

class _State:
    def __init__(self, opts, units, fleet):
        self.opts = opts
        self.units = units
        self.fleet = fleet
        self.issues = []
        self.chooser = None  # _Chooser of the pass, made at its first choice

    def issue(self, code, message, service=None, unit=None):
        self.issues.append({
            "code": code, "service": None if service is None else service.name,
            "gpu": None if unit is None else unit.label, "message": message,
        })


def _describe(unit):
    text = unit.label
    if unit.name:
        text += " (%s)" % unit.name
    return text


def _assign(state, service, unit, explanation):
    remaining_before = unit.remaining
    notes = explanation.setdefault("notes", [])
    if service.budget > unit.usable and unit.usable > 0:
        service.adjusted = True
        detail = "%d MiB total - %d MiB headroom" % (unit.total, unit.headroom)
        if unit.foreign:
            detail += " - %d MiB used by other processes" % unit.foreign
        if service.budget > unit.total:
            head = "%s VRAM budget (%s GB) exceeds %s (%s GB)." % (
                service.name, gb(service.budget), unit.label, gb(unit.total))
        else:
            head = "%s VRAM budget (%s GB) exceeds what %s (%s GB) has left for it." % (
                service.name, gb(service.budget), unit.label, gb(unit.total))
        state.issue("budget_exceeds_gpu", "%s Auto-adjusted to %s GB (%s); some models may not "
                    "load." % (head, gb(unit.usable), detail), service, unit)
        notes.append("budget cut from %d to %d MiB to fit %s" % (service.budget, unit.usable,
                                                                 unit.label))
        service.budget = unit.usable
    elif unit.total is None:
        state.issue("memory_unknown", "%s memory size unknown: %s (%s GB) is placed on it "
                    "without a memory check and may not load." % (
                        unit.label, service.name, gb(service.budget)), service, unit)
    elif service.budget > unit.usable:
        state.issue("budget_exceeds_gpu", "%s VRAM budget (%s GB) exceeds %s: it has no usable "
                    "memory (%d MiB total, %d MiB headroom, %d MiB used by other processes)."
                    % (service.name, gb(service.budget), unit.label, unit.total or 0,
                       unit.headroom, unit.foreign), service, unit)
    if service.is_llm and service.need is not None and service.need > unit.usable \
            and unit.total is not None and service.count == 1:
        larger = [u for u in state.units if u.placeable and u.usable > unit.usable
                  and _hard_reject(service, u) is None]
        message = "%s: %s requires ~%s GB, %s only has %s GB" % (
            service.name, service.model or "the LLM", gb(service.need), unit.label,
            gb(unit.usable))
        if larger:
            big = max(larger, key=lambda u: (u.usable, -u.order))
            message += "; %s (%s GB) is larger" % (big.label, gb(big.usable))
        state.issue("llm_on_small_gpu", message + ".", service, unit)
    cc_rank = _cc_rank(service, unit)
    if cc_rank == 2:
        state.issue("compute_capability_too_low", "%s needs compute capability %s; %s has %s."
                    % (service.name, _cc_text(service.min_cc), _describe(unit),
                       _cc_text(unit.cc)), service, unit)
    elif cc_rank == 1:
        state.issue("compute_capability_unknown", "%s needs compute capability %s; %s does not "
                    "report one." % (service.name, _cc_text(service.min_cc), _describe(unit)),
                    service, unit)
    if _exclusive_conflict(service, unit):
        holder = unit.exclusive or service.name
        others = [s.name for s in unit.services if s.name != holder] + \
            ([service.name] if service.name != holder else [])
        state.issue("exclusive_not_possible", "%s asks for %s alone, but it shares it with %s."
                    % (holder, unit.label, ", ".join(others)), service, unit)
    service.unit = unit
    unit.assigned += service.budget
    unit.services.append(service)
    if service.exclusive and unit.exclusive is None:
        unit.exclusive = service.name
    if service.is_llm:
        unit.llms += 1
    if state.chooser is not None:
        state.chooser.changed(unit)
    explanation.update(
        gpu=unit.label, host=unit.host, remaining_before_mib=remaining_before,
        usable_mib=unit.usable,
    )
    service.explanation = explanation


def _assign_set(state, service, units, explanation):
    """_assign on each GPU of ``units``, the smallest first: a budget cut to fit it fits all
    of them. The explanation names the set and the slowest link between its GPUs."""
    if len(units) == 1:
        _assign(state, service, units[0], explanation)
        return
    before = min(u.remaining for u in units)
    smallest = min(units, key=lambda u: (u.usable, u.order))
    for unit in [smallest] + [u for u in units if u is not smallest]:
        _assign(state, service, unit, explanation)
    if service.is_llm and service.need is not None and service.need > smallest.usable \
            and smallest.total is not None:
        state.issue("llm_on_small_gpu", "%s: %s requires ~%s GB on each of %d GPUs, %s only "
                    "has %s GB." % (service.name, service.model or "the LLM", gb(service.need),
                                    len(units), smallest.label, gb(smallest.usable)),
                    service, smallest)
    service.unit = units[0]
    service.units = list(units)
    link = LINK_NAMES[_set_link(units)]
    explanation.update(gpu="%s (%s)" % (_set_label(units), link),
                       gpus=[u.label for u in units], link=link, host=units[0].host,
                       remaining_before_mib=before, usable_mib=smallest.usable)


def _pin_matches(service, units, pin=None):
    """(the units a pin of ``service`` names, the units it could name)."""
    pin = service.pin if pin is None else pin
    candidates = [u for u in units if service.host is None or u.host == service.host]
    text = str(pin).strip()
    if _pin_is_index(pin):
        found = [u for u in candidates if u.mig_index is None and u.key == str(int(text))]
    elif _MIG_KEY_RE.match(text):
        major, minor = _MIG_KEY_RE.match(text).groups()
        found = [u for u in candidates if u.key == "%d:%d" % (int(major), int(minor))]
    else:
        found = [u for u in candidates if u.uuid and u.uuid.lower() == text.lower()]
    return found, candidates


def _resolve_pin(service, units, pin=None):
    """(unit, None) or (None, why the pin cannot be honoured)."""
    found, candidates = _pin_matches(service, units, pin)
    if not found:
        known = ", ".join(u.key if u.host is None else "%s:%s" % (u.host, u.key)
                          for u in candidates if u.key is not None) or "none"
        return None, "which does not exist (GPUs: %s)" % known
    unit = found[0]
    if not unit.placeable:
        return None, "which cannot take services (%s)" % unit.reason
    reason = _hard_reject(service, unit)
    if reason is not None:
        return None, "which it may not use (%s)" % reason
    return unit, None


def _resolve_pins(service, units):
    """(the units of ``service``'s pins, None), or (None, why they cannot be honoured): with
    ``gpus`` N > 1, N distinct whole GPUs of one host and one vendor."""
    if service.count == 1:
        unit, problem = _resolve_pin(service, units)
        return (None, problem) if unit is None else ([unit], None)
    chosen = []
    for pin in service.pin:
        unit, problem = _resolve_pin(service, units, pin)
        if unit is None:
            return None, "and GPU %s is not usable, %s" % (pin, problem)
        if unit.mig_index is not None:
            return None, "and %s is a MIG device; a service spanning GPUs takes whole GPUs" % (
                unit.label)
        if unit in chosen:
            return None, "and two of them name %s" % unit.label
        chosen.append(unit)
    if len({(u.host, u.vendor) for u in chosen}) > 1:
        return None, "which are not GPUs of one host and one vendor (%s)" % ", ".join(
            "%s: %s" % (u.label, u.vendor) for u in chosen)
    return chosen, None


def _order(strategy, services):
    def key(service):
        if strategy == "latency_optimized":
            group = (0 if service.critical else 1, 0 if service.exclusive else 1)
        elif strategy == "isolation_first":
            group = (0 if service.is_llm else 1, 0 if service.exclusive else 1)
        else:
            group = (0 if service.exclusive else 1,)
        # A service spanning GPUs first, the widest first: the hardest to fit.
        return (-service.count, *group, -service.budget, service.pos)
    return sorted(services, key=key)


def _llm_units_with_room(service, units, limit=3):
    """Labels of the first units holding an LLM that have room for ``service`` (then '...')."""
    labels = []
    for unit in units:
        if unit.llms and service.budget <= unit.remaining and _hard_reject(service, unit) is None:
            if len(labels) == limit:
                return [*labels, "..."]
            labels.append(unit.label)
    return labels


def _place_all(state, services):
    strategy = state.opts["strategy"]
    units = state.units
    fleet_dedicated = any(u.dedicated for u in units)
    pending = []
    for service in services:
        if service.pin is None:
            pending.append(service)
            continue
        chosen, problem = _resolve_pins(service, units)
        if chosen is None:
            service.fallback = problem
            pending.append(service)
            continue
        service.pinned = True
        _assign_set(state, service, chosen, {
            "rule": "pinned to %s by its gpu field" % _set_label(chosen), "rejected": [],
            "rejected_total": 0,
        })
        _span_issues(state, service, chosen)
    for service in _order(strategy, pending):
        if state.plan is not None and service.count > 1:
            mode = "exact"
            chosen = [units[i] for i in state.plan[service.pos]]
            unit, explanation = _choose_planned(state, service, chosen[0])
            explanation["rejected"], explanation["rejected_total"] = [], 0
        elif state.plan is not None:
            mode = "exact"
            unit, explanation = _choose_planned(state, service, units[state.plan[service.pos]])
        elif service.count > 1:
            mode = _mode(strategy, service, state.repair)
            chosen, explanation = _choose_set(service, units, mode, fleet_dedicated)
            unit = None if chosen is None else chosen[0]
        else:
            mode = _mode(strategy, service, state.repair)
            unit, explanation = _chooser(state, services).choose(service, mode, fleet_dedicated)
        if unit is None and service.count > 1:
            _short(state, service, explanation)
            continue
        if unit is None:
            reasons = "; ".join("%s: %s" % (r["gpu"], r["reason"])
                                for r in explanation["rejected"]) or "no GPU at all"
            state.issue("unplaced", "%s was not placed: no GPU can take it (%s)."
                        % (service.name, reasons), service)
            explanation.update(rule="not placed", gpu=None, host=None)
            service.explanation = explanation
            continue
        best_key = explanation.pop("best_key", None)
        if best_key is not None and best_key[2]:
            if state.stop_early:
                return  # this pass cannot fit everything; its caller tries the next one
            beside = _llm_units_with_room(service, units) \
                if mode == "shared" and not best_key[1] and service.count == 1 else []
            explanation.setdefault("notes", []).append(
                "fits only next to an LLM (%s), which isolation_first keeps alone: placed where "
                "the overflow is smallest" % ", ".join(beside) if beside
                else "fits on no unit: placed where the overflow is smallest")
        chosen = chosen if service.count > 1 else [unit]
        _assign_set(state, service, chosen, explanation)
        _span_issues(state, service, chosen)
        if service.fallback:
            state.issue("pin_not_found", "%s is pinned to GPU %s, %s; fell back to %s."
                        % (service.name, _pin_text(service), service.fallback,
                           _describe_set(chosen)), service, unit)
            explanation["rule"] = "pin not usable, fell back to " + explanation["rule"]
        elif strategy == "manual":
            how = {"exact": "by an exhaustive search for a placement where every service fits",
                   "best_fit": "by best fit (the fullest unit with room), which gives every "
                               "service room"}.get(mode, "the unit with the most free memory")
            message = "%s has no gpu pin under strategy manual; placed on %s, %s." % (
                service.name, _describe_set(chosen), how)
            state.issue("unpinned_in_manual", message, service, unit)
        if mode == "critical" and max(u.speed_rank for u in chosen) != 0 and \
                _fastest_count(units, chosen) >= len(chosen):
            state.issue("latency_not_fastest", "%s is latency-critical but the fastest GPU has "
                        "no room; placed on %s." % (service.name, _describe_set(chosen)),
                        service, unit)
    if strategy == "balanced":
        _improve_balance(state, [s for s in services if s.unit is not None and not s.pinned
                                 and not s.adjusted and s.count == 1])


def _fastest_count(units, chosen):
    """How many whole GPUs of the fastest kind the host of ``chosen`` has (all of them for
    a single GPU or MIG device)."""
    if len(chosen) == 1:
        return 1
    return sum(1 for u in units if u.host == chosen[0].host and u.mig_index is None
               and u.placeable and u.speed_rank == 0)


def _describe_set(units):
    if len(units) == 1:
        return _describe(units[0])
    names = sorted(set(u.name for u in units if u.name))
    return _set_label(units) + (" (%s)" % ", ".join(names) if names else "")


def _short(state, service, explanation):
    """A service spanning N GPUs where no host offers N it may use: not placed, said."""
    most = explanation.pop("most")
    have = "%d (%s)" % (len(most), _set_label(most)) if most else "none"
    state.issue("tensor_parallel_short", "%s was not placed: it spans %d GPUs (gpus: %d), "
                "which must be whole GPUs of one host and one vendor, and the most any host "
                "offers it is %s%s." % (
                    service.name, service.count, service.count, have,
                    "".join("; %s: %s" % (r["gpu"], r["reason"])
                            for r in explanation["rejected"])), service)
    explanation.update(rule="not placed", gpu=None, host=None)
    service.explanation = explanation


def _span_issues(state, service, chosen):
    """What a service spanning GPUs is told: another engine than vLLM, a slow link."""
    if len(chosen) == 1:
        return
    if service.engine != "vllm":
        state.issue("tensor_parallel_engine", "%s spans %d GPUs with engine %s: only vLLM "
                    "runs tensor parallel (--tensor-parallel-size); %s is given the %d GPUs "
                    "as visible devices%s." % (
                        service.name, len(chosen), service.engine, service.engine,
                        len(chosen), ", and Ollama splits a model across them by itself"
                        if service.engine == "ollama" else ", and using them is up to it"),
                    service, chosen[0])
    link = _set_link(chosen)
    if SLOW_LINK <= link < LINK_UNKNOWN:
        host = [u for u in state.units if u.host == chosen[0].host and u.placeable
                and u.mig_index is None]
        best = link
        if math.comb(len(host), len(chosen)) <= SET_ENUMERATION_LIMIT:
            best = min(_set_link(list(c)) for c in itertools.combinations(host, len(chosen)))
        state.issue("tensor_parallel_slow_link", "%s spans %s, whose slowest link is %s: "
                    "tensor parallel exchanges activations over it on every layer%s." % (
                        service.name, _set_label(chosen), LINK_NAMES[link],
                        "; this host has sets of %d linked by %s (pinned, taken or without "
                        "room)" % (len(chosen), LINK_NAMES[best]) if best < link
                        else "; this host has no faster-linked set of %d" % len(chosen)),
                    service, chosen[0])


# ---- balanced: local search --------------------------------------------------------------

def _variance_parts(units):
    utils = [u.assigned / float(u.usable) for u in units]
    return sum(utils), sum(x * x for x in utils)


def _movable(service, unit):
    return (_hard_reject(service, unit) is None and _cc_rank(service, unit) <= _cc_rank(
        service, service.unit) and unit.exclusive is None and not service.exclusive)


def _improve_balance(state, services):
    units = [u for u in state.units if u.placeable and u.usable > 0]
    n = len(units)
    if n < 2 or len(services) * n > LOCAL_SEARCH_LIMIT:
        return
    moves = 0
    for _pass in range(LOCAL_SEARCH_PASSES):
        total, squares = _variance_parts(units)
        current = squares / n - (total / n) ** 2
        best = None
        for service in services:
            source = service.unit
            if source not in units:
                continue
            du = service.budget / float(source.usable)
            su = source.assigned / float(source.usable)
            for target in units:
                if target is source or service.budget > target.remaining or \
                        not _movable(service, target):
                    continue
                dv = service.budget / float(target.usable)
                sv = target.assigned / float(target.usable)
                new_total = total - du + dv
                new_squares = squares - su * su + (su - du) ** 2 - sv * sv + (sv + dv) ** 2
                gain = current - (new_squares / n - (new_total / n) ** 2)
                if gain > 1e-12 and (best is None or gain > best[0] + 1e-12):
                    best = (gain, "move", service, target)
        if len(services) <= SWAP_LIMIT:
            best = _best_swap(services, units, (total, squares, current), best)
        if best is None:
            break
        moves += 1
        if best[1] == "move":
            _move(best[2], best[3])
        else:
            first, second = best[2], best[3]
            one, two = first.unit, second.unit
            _move(first, two)
            _move(second, one)
    if moves:
        for service in services:
            service.explanation["gpu"] = service.unit.label
            service.explanation["host"] = service.unit.host
        state.balance_moves = moves


def _best_swap(services, units, variance, best):
    n = len(units)
    total, squares, current = variance
    for i, first in enumerate(services):
        for second in services[i + 1:]:
            one, two = first.unit, second.unit
            if one is two or one not in units or two not in units:
                continue
            delta = second.budget - first.budget  # what ``one`` gains
            if one.assigned + delta > one.usable or two.assigned - delta > two.usable:
                continue
            if not (_movable(first, two) and _movable(second, one)):
                continue
            s1, s2 = one.assigned / float(one.usable), two.assigned / float(two.usable)
            n1, n2 = s1 + delta / float(one.usable), s2 - delta / float(two.usable)
            new_total = total - s1 - s2 + n1 + n2
            new_squares = squares - s1 * s1 - s2 * s2 + n1 * n1 + n2 * n2
            gain = current - (new_squares / n - (new_total / n) ** 2)
            if gain > 1e-12 and (best is None or gain > best[0] + 1e-12):
                best = (gain, "swap", first, second)
    return best


def _move(service, target):
    source = service.unit
    source.assigned -= service.budget
    source.services.remove(service)
    if service.is_llm:
        source.llms -= 1
    target.assigned += service.budget
    target.services.append(service)
    target.services.sort(key=lambda s: s.pos)
    if service.is_llm:
        target.llms += 1
    service.unit = target
    service.explanation.setdefault("notes", []).append(
        "moved from %s to %s to even out utilisation" % (source.label, target.label))
    service.explanation["remaining_before_mib"] = target.remaining + service.budget


# ---- results ----------------------------------------------------------------------------

_START_GROUP = {"other": 0, "ollama": 1, "vllm": 2}


def _start_order(unit):
    """Others first, then Ollama (preloading, kept loaded), vLLM last on settled memory."""
    return sorted(unit.services, key=lambda s: (_START_GROUP[s.engine], s.pos))


def _visible(state, service, unit):
    by_uuid = state.opts["visible_devices_by"] == "uuid"
    # ROCR_VISIBLE_DEVICES and ZE_AFFINITY_MASK take the vendor's own GPU numbers: amd-smi's
    # UUID is not the "GPU-<id>" form ROCm accepts (a GPU given it is hidden from the engine).
    own_numbers = unit.vendor in ("amd", "intel") and unit.vendor_index is not None
    if by_uuid and unit.uuid and not own_numbers:
        value, by_index = unit.uuid, False
    else:
        value, by_index = unit.key, True
        if own_numbers:
            value = str(unit.vendor_index)
        if by_uuid and not own_numbers:
            state.issue("no_uuid", "%s reports no UUID: %s is given its index %s%s." % (
                unit.label, service.name, value,
                "" if unit.vendor in ("amd", "intel") else ", with CUDA_DEVICE_ORDER=PCI_BUS_ID"),
                service, unit)
    if unit.vendor == "amd":
        env = {"ROCR_VISIBLE_DEVICES": value}
    elif unit.vendor == "intel":
        env = {"ZE_AFFINITY_MASK": value}
    else:
        env = {"CUDA_VISIBLE_DEVICES": value}
        if by_index:
            env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    return value, env


def _engine_settings(state, service, unit, started_before, against=None):
    """Engine knobs matching the budget; ``started_before`` are co-tenants started earlier;
    ``against`` the total vLLM's utilisation is a fraction of (a set's smallest GPU)."""
    budget = service.budget
    free_at_start = (unit.total or 0) - unit.foreign - sum(s.budget for s in started_before)
    shared = len(unit.services) > 1
    if service.engine == "vllm":
        total = unit.total or 0
        util = math.floor(budget * 100.0 / (against or total)) / 100.0 \
            if against or total else 0.0
        settings = {"gpu_memory_utilization": util}
        if service.context_length:
            settings["max_model_len"] = service.context_length
        if service.parallel:
            settings["max_num_seqs"] = service.parallel
        if unit.total is None:
            # Memory size unknown (said): no fraction of it to give; vLLM's own default.
            del settings["gpu_memory_utilization"]
            return settings
        needed = math.ceil(util * total)
        if util <= 0:
            state.issue("vllm_start_rule", "%s: a budget of %d MiB is under 1 %% of %s; vLLM "
                        "cannot start with gpu_memory_utilization 0." % (
                            service.name, budget, unit.label), service, unit)
        elif needed > free_at_start:
            state.issue("vllm_start_rule", "%s: vLLM starts only when free memory >= "
                        "gpu_memory_utilization x total (%.2f x %d = %d MiB), but %s will have "
                        "%d MiB free when it starts (%d MiB used by other processes%s)."
                        % (service.name, util, total, needed, unit.label, free_at_start,
                           unit.foreign, "".join(", %d MiB by %s" % (s.budget, s.name)
                                                 for s in started_before)), service, unit)
        return settings
    if service.engine == "ollama":
        # Ollama loads its models lazily, whenever a request comes: by then any co-tenant may
        # hold its share (a vLLM started beside it, another Ollama server that loaded first),
        # whatever the start order. Count every co-tenant as resident.
        free_at_load = (unit.total or 0) - unit.foreign - sum(
            s.budget for s in unit.services if s is not service)
        bounded = shared or service.override
        overhead = max(free_at_load - budget, 0) if bounded else unit.headroom
        settings = {"OLLAMA_GPU_OVERHEAD": overhead * _vram.MIB}
        if shared:
            settings["OLLAMA_MAX_LOADED_MODELS"] = 1
        if any(s.engine == "vllm" for s in unit.services):
            settings["OLLAMA_KEEP_ALIVE"] = "-1"
        if service.context_length:
            settings["OLLAMA_CONTEXT_LENGTH"] = service.context_length
        if service.parallel:
            settings["OLLAMA_NUM_PARALLEL"] = service.parallel
        return settings
    return {"VRAM_BUDGET_MIB": budget, "VRAM_BUDGET_GB": gb(budget)}


def _span_settings(state, service, spans):
    """Engine settings of a service on N GPUs (``spans``: each GPU and the co-tenants started
    before it there). vLLM: one utilisation for every worker, against the smallest total of
    the N, its start rule checked on each, and ``tensor_parallel_size``. Ollama: the largest
    overhead any of them needs to hold it to its budget. Others: the per-GPU budget."""
    totals = [unit.total for unit, _before in spans if unit.total]
    against = min(totals) if totals else None
    merged = {}
    for unit, before in sorted(spans, key=lambda item: item[0].order):
        for key, value in _engine_settings(state, service, unit, before, against).items():
            if key == "OLLAMA_GPU_OVERHEAD":
                merged[key] = max(value, merged.get(key, 0))
            else:
                merged.setdefault(key, value)
    if service.engine == "vllm":
        if len(totals) < len(spans):
            merged.pop("gpu_memory_utilization", None)
        elif len(set(totals)) > 1:
            util = merged["gpu_memory_utilization"]
            service.explanation.setdefault("notes", []).append(
                "vLLM takes gpu_memory_utilization x total on every GPU of the set: %s" % (
                    ", ".join("%d MiB on %s" % (math.ceil(util * unit.total), unit.label)
                              for unit, _before in spans)))
        merged["tensor_parallel_size"] = service.count
    return merged


def _finish(state, services):
    strategy = state.opts["strategy"]
    settings = {}
    spans = {}
    for unit in state.units:
        if not unit.services:
            continue
        if len(unit.services) > 1 and unit.assigned > unit.usable and unit.total is not None:
            names = ", ".join(s.name for s in unit.services)
            state.issue("combined_exceeds_gpu", "Combined VRAM (~%s GB: %s) exceeds %s capacity "
                        "(%s GB; %s GB usable after %d MiB headroom and %d MiB used by other "
                        "processes)." % (gb(unit.assigned), names, unit.label,
                                         gb(unit.total or 0), gb(unit.usable), unit.headroom,
                                         unit.foreign), unit=unit)
        if strategy == "isolation_first" and unit.llms and len(unit.services) > 1:
            llms = [s.name for s in unit.services if s.is_llm]
            others = [s.name for s in unit.services if s.name not in llms]
            state.issue("isolation_not_kept",
                        "isolation_first: %s shares %s with %s (every other GPU holds an LLM, "
                        "or sharing lets every service fit)."
                        % (", ".join(llms), unit.label, ", ".join(others) or "another LLM"),
                        unit=unit)
        order = _start_order(unit)
        for i, service in enumerate(order):
            if service.count > 1:
                spans.setdefault(service.name, []).append((unit, order[:i]))
            else:
                settings[service.name] = _engine_settings(state, service, unit, order[:i])
        vllms = [s.name for s in order if s.engine == "vllm"]
        if vllms and len(order) > 1:
            for service in order:
                service.explanation.setdefault("notes", []).append(
                    "%s shares %s with vLLM (%s): start order %s; vLLM starts last on settled "
                    "memory and co-tenants stay loaded, since memory freed while vLLM profiles "
                    "aborts its start" % (service.name, unit.label, ", ".join(vllms),
                                          ", ".join(s.name for s in order)))
    for name, span in spans.items():
        service = next(s for s in services if s.name == name)
        settings[name] = _span_settings(state, service, span)
    assignments = []
    explanations = {}
    for service in services:
        unit = service.unit
        explanation = service.explanation
        if service.estimate is not None:
            explanation["estimate"] = service.estimate
        if service.override and service.need is not None and service.requested < service.need:
            explanation.setdefault("notes", []).append(
                "vram_budget_mib %d is below the estimated need of %d MiB"
                % (service.requested, service.need))
        explanation.setdefault("notes", [])
        explanations[service.name] = explanation
        entry = {
            "service": service.name, "host": None, "engine": service.engine,
            "role": service.role, "model": service.model, "gpu_index": None, "gpu": None,
            "gpu_uuid": None, "gpu_name": None, "vram_need_mib": service.need,
            "vram_requested_mib": service.requested, "vram_budget_mib": service.budget,
            "adjusted": service.adjusted, "pinned": service.pinned,
            "fallback": bool(service.fallback), "device_id": None, "environment": {},
            "engine_settings": {}, "gpu_count": service.count, "gpus": [],
        }
        if unit is not None:
            seen = [(u, _visible(state, service, u)) for u in service.units or [unit]]
            device = ",".join(value for _u, (value, _env) in seen)
            env = {}
            for _u, (_value, one) in seen:
                env.update(one)
            env[next(iter(seen[0][1][1]))] = device
            entry.update(host=unit.host, gpu_index=unit.index, gpu=unit.key,
                         gpu_uuid=unit.uuid, gpu_name=unit.name, device_id=device,
                         environment=env, engine_settings=settings[service.name],
                         gpus=[{"gpu": u.key, "gpu_index": u.index, "gpu_uuid": u.uuid,
                                "gpu_name": u.name, "device_id": value}
                               for u, (value, _env) in seen])
        assignments.append(entry)
    return assignments, explanations


def _gpu_table(units):
    table = []
    for unit in units:
        table.append({
            "host": unit.host, "gpu": unit.key, "index": unit.index, "uuid": unit.uuid,
            "name": unit.name, "placeable": unit.placeable, "reason": unit.reason,
            "total_mib": unit.total, "foreign_mib": unit.foreign,
            "headroom_mib": unit.headroom, "usable_mib": unit.usable,
            "budget_mib": unit.assigned,
            "free_after_mib": None if unit.total is None else unit.usable - unit.assigned,
            "utilization": round(unit.assigned / float(unit.usable), 4) if unit.usable else None,
            "speed_rank": unit.speed_rank if unit.placeable else None,
            "services": [s.name for s in sorted(unit.services, key=lambda s: s.pos)],
            "start_order": [s.name for s in _start_order(unit)],
        })
    return table


def _summary(units, services, issues):
    used = [u for u in units if u.placeable and u.usable > 0]
    utils = [u.assigned / float(u.usable) for u in used]
    mean = sum(utils) / len(utils) if utils else 0.0
    spread = math.sqrt(sum((x - mean) ** 2 for x in utils) / len(utils)) if utils else 0.0
    return {
        "services": len(services),
        "placed": sum(1 for s in services if s.unit is not None),
        "unplaced": [s.name for s in services if s.unit is None],
        "adjusted": [s.name for s in services if s.adjusted],
        "overcommitted_gpus": [u.label for u in units if u.services and u.total is not None
                               and u.assigned > u.usable],
        # Services on a GPU whose memory size is unknown: no fit can be claimed there.
        "unknown_memory_gpus": [u.label for u in units if u.services and u.total is None],
        "gpus_used": sum(1 for u in units if u.services),
        "utilization_mean": round(mean, 4),
        "utilization_stddev": round(spread, 4),
        "fits": all(s.unit is not None and not s.adjusted for s in services)
        and not any(u.services and (u.total is None or u.assigned > u.usable) for u in units),
        "warning_count": len(issues),
    }


def _gpu_assignments(strategy, services, fleet):
    """The gpu-assignments.yml shape: strategy and assignments (without a timestamp: outputs
    are stable)."""
    assignments = {}
    for service in services:
        unit = service.unit
        entry = {
            "gpu": None if unit is None else (
                [u.index for u in service.units] if service.count > 1 and service.units
                else unit.index if unit.mig_index is None else unit.key),
            "vram_budget": float(gb(service.budget))
            if service.budget is not None and (service.adjusted or service.override) else None,
        }
        if fleet:
            entry = {"host": None if unit is None else unit.host, **entry}
        assignments[service.name] = entry
    return {"strategy": strategy, "assignments": assignments}


# Strategies whose rule is about memory only: when their greedy pass leaves a service
# without room, a best-fit pass is tried and kept if it places everything.
REPAIRABLE = ("manual", "vram_based", "balanced")


def _fits(units, services):
    return all(s.unit is not None and not s.adjusted for s in services) and \
        not any(u.services and u.assigned > u.usable for u in units)


# Exhaustive search, for the same strategies, when best fit fails too. Bounded so that large
# instances never slow down: at most this many services to place (pins aside) on at most this
# many units they may use, and this many search nodes (4-7 us each in pure Python).
EXACT_SERVICE_LIMIT = 12
EXACT_UNIT_LIMIT = 8
EXACT_NODE_BUDGET = 10000


def _exact_domains(units, free, loads, count):
    """Per free service, the units it may use: hard checks passed, the best compute capability
    rank it can get (as the strategies rank them), room; an exclusive service an empty one."""
    domains = []
    for service in free:
        allowed = [i for i, unit in enumerate(units) if _hard_reject(service, unit) is None]
        best = min((_cc_rank(service, units[i]) for i in allowed), default=None)
        domain = [i for i in allowed if _cc_rank(service, units[i]) == best
                  and loads[i] + service.budget <= units[i].usable
                  and not (service.exclusive and count[i])]
        if service.count > 1:
            domain = _exact_sets(units, domain, service.count)
        domains.append(domain)
    return domains


def _exact_sets(units, allowed, size):
    """The sets of ``size`` whole GPUs of one host and one vendor among ``allowed``, fastest
    link first (then position), for a service spanning GPUs."""
    groups = {}
    for i in allowed:
        if units[i].mig_index is None:
            groups.setdefault((units[i].host, units[i].vendor), []).append(i)
    sets = [c for group in groups.values() for c in itertools.combinations(group, size)]
    return sorted(sets, key=lambda c: (_set_link([units[i] for i in c]), c))


def _exact_plan(make_units, services, opts):
    """``(plan, nodes)``: {service position: unit position} where every service fits (pins kept,
    exclusive services alone), or ``(None, nodes)`` when none is found within the bounds.

    Depth-first, largest budget first; units in the strategy's order (most free first;
    balanced: lowest utilisation after placement first), a unit skipped when one in the same
    state was tried; pruned when the rest cannot fit in the room left. The first fit wins,
    except under balanced, which keeps the fit with the lowest variance of utilisation found.
    A service spanning N GPUs (placed first) tries each set of N GPUs of one host with room,
    the fastest link first; the units it may use count towards EXACT_UNIT_LIMIT.
    """
    if sum(1 for s in services if s.pin is None or s.fallback) > EXACT_SERVICE_LIMIT:
        return None, 0
    units = make_units()
    for service in services:
        service.reset()
    loads = [0] * len(units)
    count = [0] * len(units)
    solo = [False] * len(units)
    free = []
    for service in services:
        pinned = _resolve_pins(service, units)[0] if service.pin is not None else None
        if pinned is None:
            free.append(service)
            continue
        for unit in pinned:
            i = units.index(unit)
            loads[i] += service.budget
            count[i] += 1
            solo[i] = solo[i] or service.exclusive
    if not free or len(free) > EXACT_SERVICE_LIMIT or \
            any(load > unit.usable for load, unit in zip(loads, units)):
        return None, 0
    domains = _exact_domains(units, free, loads, count)
    flat = [set(i for item in domain for i in (item if isinstance(item, tuple) else (item,)))
            for domain in domains]
    candidates = sorted(set().union(*flat))
    room = sum(units[i].usable - loads[i] for i in candidates)
    if not all(domains) or len(candidates) > EXACT_UNIT_LIMIT or \
            sum(s.budget * s.count for s in free) > room:
        return None, 0
    order = sorted(range(len(free)), key=lambda k: (-free[k].count, -free[k].budget,
                                                    free[k].pos))
    # Units in the same state are interchangeable for the single-GPU services, which come
    # after every service spanning GPUs.
    sig = {i: (units[i].usable, bool(units[i].dedicated), tuple(i in flat[k] for k in order))
           for i in candidates}
    measured = [i for i, unit in enumerate(units) if unit.placeable and unit.usable > 0]
    balanced = opts["strategy"] == "balanced"
    smallest = min(s.budget for s in free)
    layout = [None] * len(free)
    search = {"nodes": 0, "best": None, "layout": None, "stop": False}

    def variance():
        utils = [loads[i] / float(units[i].usable) for i in measured]
        mean = sum(utils) / len(utils)
        return sum((u - mean) ** 2 for u in utils) / len(utils)

    def preference(i, size):
        first = 0 if units[i].dedicated else 1  # as the strategies: a dedicated host first
        if balanced:
            return (first, (loads[i] + size) / float(units[i].usable), i)
        return (first, loads[i] - units[i].usable, i)

    def dfs(depth, rest):
        if depth == len(order):
            value = variance() if balanced else 0.0
            if search["best"] is None or value < search["best"] - 1e-12:
                search["best"], search["layout"] = value, list(layout)
            search["stop"] = not balanced
            return
        search["nodes"] += 1
        if search["nodes"] > EXACT_NODE_BUDGET:
            search["stop"] = True
            return
        room = 0
        for i in candidates:
            left = units[i].usable - loads[i]
            if left >= smallest:
                room += left
        if rest > room:
            return
        k = order[depth]
        service = free[k]
        size = service.budget
        if service.count > 1:
            span(depth, rest, k, service)
            return
        tried = set()
        for i in sorted(domains[k], key=lambda i: preference(i, size)):
            if loads[i] + size > units[i].usable or solo[i] or (service.exclusive and count[i]):
                continue
            same = (sig[i], loads[i])
            if same in tried:
                continue
            tried.add(same)
            loads[i] += size
            count[i] += 1
            solo[i] = service.exclusive
            layout[k] = i
            dfs(depth + 1, rest - size)
            loads[i] -= size
            count[i] -= 1
            solo[i] = False
            if search["stop"]:
                return

    def span(depth, rest, k, service):
        size = service.budget
        for members in sorted(domains[k], key=lambda c: (
                _set_link([units[i] for i in c]),
                max(preference(i, size)[:2] for i in c), c)):
            if any(loads[i] + size > units[i].usable or solo[i]
                   or (service.exclusive and count[i]) for i in members):
                continue
            for i in members:
                loads[i] += size
                count[i] += 1
                solo[i] = service.exclusive
            layout[k] = members
            dfs(depth + 1, rest - size * service.count)
            for i in members:
                loads[i] -= size
                count[i] -= 1
                solo[i] = False
            if search["stop"]:
                return

    dfs(0, sum(s.budget * s.count for s in free))
    if search["layout"] is None:
        return None, search["nodes"]
    return {free[k].pos: i for k, i in enumerate(search["layout"])}, search["nodes"]


def _attempt(make_units, services, opts, fleet, repair, plan=None, nodes=0, stop_early=False):
    units = make_units()
    _rank_speed(units)
    for unit in units:
        if not unit.placeable:
            unit.speed_rank = None
    for service in services:
        service.reset()
    state = _State(opts, units, fleet)
    state.balance_moves = 0
    state.repair = repair
    state.plan = plan
    state.plan_nodes = nodes
    state.stop_early = stop_early
    _place_all(state, services)
    return state


def _solve(make_units, services, opts, fleet):
    # With a second pass to fall back to, the first stops at the first service without room:
    # its result is only kept when everything fits (balanced's local search may still make
    # room, so it runs in full). isolation_first's second pass lets a service join an LLM; it
    # is kept only if then everything fits, else each LLM stays alone.
    fallback = opts["strategy"] in REPAIRABLE or opts["strategy"] == "isolation_first"
    state = _attempt(make_units, services, opts, fleet, repair=False,
                     stop_early=fallback and opts["strategy"] != "balanced")
    if fallback and not _fits(state.units, services) and \
            any(s.pin is None or s.fallback for s in services):
        retry = _attempt(make_units, services, opts, fleet, repair=True)
        if _fits(retry.units, services):
            state = retry
        else:
            plan, nodes = _exact_plan(make_units, services, opts) \
                if opts["strategy"] in REPAIRABLE else (None, 0)
            exact = None if plan is None else _attempt(make_units, services, opts, fleet,
                                                       repair=False, plan=plan, nodes=nodes)
            if exact is not None and _fits(exact.units, services):
                state = exact
            else:
                state = _attempt(make_units, services, opts, fleet, repair=False)
    units = state.units
    assignments, explanations = _finish(state, services)
    return {
        "strategy": opts["strategy"],
        "headroom_mib": opts["headroom_mib"],
        "assignments": assignments,
        "warnings": [issue["message"] for issue in state.issues],
        "issues": state.issues,
        "explanations": explanations,
        "gpus": _gpu_table(units),
        "summary": dict(_summary(units, services, state.issues),
                        balance_moves=state.balance_moves, repaired=state.repair,
                        exact_search=state.plan is not None),
        "gpu_assignments": _gpu_assignments(opts["strategy"], services, fleet),
    }


# ---- public entry points ----------------------------------------------------------------

def place(gpus, services, *, strategy=DEFAULT_STRATEGY, headroom_mib=DEFAULT_HEADROOM_MIB,
          reserve_mib=None, live_usage="account", managed_processes=None,
          visible_devices_by="uuid", catalog=None, pin_not_found="warn"):
    """Place ``services`` on the GPUs of one host (``ansible_facts.gpus`` as is).

    Returns ``{strategy, headroom_mib, assignments, warnings, issues, explanations, gpus,
    summary, gpu_assignments}``; raises ValueError naming the bad field and its value.
    """
    opts = _check_options(strategy=strategy, headroom_mib=headroom_mib, reserve_mib=reserve_mib,
                          live_usage=live_usage, managed_processes=managed_processes,
                          visible_devices_by=visible_devices_by, pin_not_found=pin_not_found)
    _check_gpus(gpus, "gpus")
    checked = _check_services(services, _vram.build_catalog(catalog), fleet=False)
    for service in checked:
        if service.host is not None or service.node_selector:
            raise ValueError("services[%d] has host or node_selector, which only place_fleet "
                             "(the hosts option) uses; got: %r"
                             % (service.pos, service.host or service.node_selector))
    units = _units(gpus, opts)
    _check_pins(checked, units, opts)
    return _notices(_solve(lambda: _units(gpus, opts), checked, opts, fleet=False), units)


def _check_pins(services, units, opts):
    """A pin naming GPUs on two hosts (a UUID both report) fails before placing; with
    pin_not_found=fail, so does a pin to a GPU the facts do not list.

    A GPU that is listed but cannot take services (unhealthy, lost) still falls back with a
    warning: that is a GPU missing at run time, not a typo.
    """
    for service in services:
        for pin in _pins(service):
            _check_pin_matches(service, units, opts, pin)


def _check_pin_matches(service, units, opts, pin):
    found = _pin_matches(service, units, pin)[0]
    hosts = list(dict.fromkeys(u.host for u in found))
    if len(hosts) > 1:
        raise ValueError("services[%d].gpu of %s matches a GPU on more than one host (%s): "
                         "give services[%d].host too; got: %r"
                         % (service.pos, service.name, ", ".join(hosts), service.pos, pin))
    if len(found) > 1:
        raise ValueError("services[%d].gpu of %s matches more than one GPU (%s); got: %r"
                         % (service.pos, service.name, ", ".join(u.label for u in found),
                            pin))
    if opts["pin_not_found"] != "fail":
        return
    unit, problem = _resolve_pin(service, units, pin)
    if unit is None and problem.startswith("which does not exist"):
        raise ValueError("services[%d].gpu names a GPU this host does not have (%s); got: %r"
                         % (service.pos, problem[len("which does not exist ("):-1], pin))


def _check_hosts(hosts):
    if not isinstance(hosts, list):
        raise ValueError("hosts must be a list of {name, gpus, labels, dedicated}; got: %r"
                         % (hosts,))
    seen = {}
    checked = []
    for i, host in enumerate(hosts):
        at = "hosts[%d]" % i
        if not isinstance(host, dict):
            raise ValueError("%s must be a dict; got: %r" % (at, host))
        unknown = sorted(set(host) - set(HOST_KEYS))
        if unknown:
            raise ValueError("%s has unknown key(s): %s" % (at, ", ".join(unknown)))
        name = host.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ValueError("%s.name must be a non-empty string; got: %r" % (at, name))
        if name in seen:
            raise ValueError("%s.name duplicates hosts[%d]; got: %r" % (at, seen[name], name))
        seen[name] = i
        labels = host.get("labels") or {}
        if not isinstance(labels, dict):
            raise ValueError("%s.labels must be a dict; got: %r" % (at, labels))
        dedicated = host.get("dedicated") or []
        if isinstance(dedicated, str):
            dedicated = [dedicated]
        if not isinstance(dedicated, list) or not all(isinstance(d, str) and d
                                                      for d in dedicated):
            raise ValueError("%s.dedicated must be a list of engines, roles or service names; "
                             "got: %r" % (at, host.get("dedicated")))
        gpus = _check_gpus(host.get("gpus") if host.get("gpus") is not None else [],
                           "%s.gpus" % at)
        checked.append((name, gpus, {str(k): str(v) for k, v in labels.items()},
                        sorted(dedicated)))
    return checked


def place_fleet(hosts, services, *, strategy=DEFAULT_STRATEGY, headroom_mib=DEFAULT_HEADROOM_MIB,
                reserve_mib=None, live_usage="account", managed_processes=None,
                visible_devices_by="uuid", catalog=None, pin_not_found="warn"):
    """Place ``services`` across hosts: host and GPU per service.

    ``hosts`` is a list of ``{name, gpus, labels, dedicated}``: ``gpus`` each host's
    ``ansible_facts.gpus``; ``labels`` matched by a service's ``node_selector``; ``dedicated``
    the engines, roles or service names a host is reserved for (for example a host that runs
    only vLLM), which then prefer it. A service may name its ``host``. ``reserve_mib`` keys are
    GPU UUIDs here. Same result shape as :func:`place`, plus ``by_host``.
    """
    opts = _check_options(strategy=strategy, headroom_mib=headroom_mib, reserve_mib=reserve_mib,
                          live_usage=live_usage, managed_processes=managed_processes,
                          visible_devices_by=visible_devices_by, pin_not_found=pin_not_found)
    checked_hosts = _check_hosts(hosts)

    def make_units():
        units = []
        for name, gpus, labels, dedicated in checked_hosts:
            units.extend(_units(gpus, opts, host=name, labels=labels, dedicated=dedicated))
        return units

    checked = _check_services(services, _vram.build_catalog(catalog), fleet=True)
    names = [name for name, _gpus, _labels, _dedicated in checked_hosts]
    for service in checked:
        if service.host is not None and service.host not in names:
            raise ValueError("services[%d].host is not one of the hosts (%s); got: %r"
                             % (service.pos, ", ".join(sorted(names)) or "none", service.host))
    units = make_units()
    _check_pins(checked, units, opts)
    result = _notices(_solve(make_units, checked, opts, fleet=True), units)
    by_host = {name: {"assignments": [], "gpus": []} for name in names}
    for key in ("assignments", "gpus"):
        for item in result[key]:
            if item["host"] in by_host:
                by_host[item["host"]][key].append(item)
    result["by_host"] = by_host
    return result
