# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report's model, text table and HTML page, on data shaped as the lab gives it."""

from __future__ import annotations

import base64
import copy
import html.parser
import json
import pathlib
import re

import pytest

from ansible_collections.gpufleet.inference.plugins.module_utils import _report

FIXTURE = pathlib.Path(__file__).parents[2] / "fixtures" / "report" / "fleet.json"
HOSTS = json.loads(FIXTURE.read_text())["hosts"]


def hosts():
    return copy.deepcopy(HOSTS)


def by_host(model):
    return {entry["host"]: entry for entry in model["hosts"]}


class _Page(html.parser.HTMLParser):
    """Collects the text and the attributes of the page, and checks that tags balance."""

    VOID = {"meta", "br", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.text, self.attrs, self.stack = [], [], []

    def handle_starttag(self, tag, attrs):
        self.attrs.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, "unbalanced </%s> in %s" % (tag, self.stack)
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page):
    parser = _Page()
    parser.feed(page)
    parser.close()
    assert parser.stack == []
    return parser


def test_model_splits_each_gpu_into_ours_others_and_free():
    ws = by_host(_report.fleet(hosts()))["lab-ws"]
    a5500, a400 = ws["gpus"]
    # ollama 2500 + vision 1800 are ours; Xorg 250 and the driver's reserved 309 are others'.
    assert (a5500["ours_mib"], a5500["others_mib"], a5500["memory_free_mib"]) == (4300, 559, 19705)
    assert a5500["ours_mib"] + a5500["others_mib"] + a5500["memory_free_mib"] == 24564
    assert a5500["services"] == ["ollama", "vision"] and a5500["budgets_mib"] == 2963 + 2315
    assert (a400["ours_mib"], a400["others_mib"], a400["memory_free_mib"]) == (3100, 90, 904)
    assert a400["services"] == ["ollama_research"]


def test_model_of_the_recorded_mode_and_apply():
    # lab-ws: a plan and an apply record of before the modes joined the catalog (no mode in
    # either); the retired mode_switch role's record still names its mode.
    ws = by_host(_report.fleet(hosts()))["lab-ws"]
    assert ws["mode"] == {"mode": "chat", "exclusive": None, "description": None,
                          "source": "record", "outcome": "switched",
                          "switched_at": "2026-11-22T08:40:12.512345+00:00",
                          "downtime_s": 7.42, "drain_s": 3.1}
    assert ws["apply"]["result"] == "ok" and ws["apply"]["changed"] is True
    cpu = by_host(_report.fleet(hosts()))["lab-cpu"]
    assert cpu["mode"] is None and cpu["apply"]["changed"] is None


def test_over_budget_service_is_flagged_and_warned():
    ws = by_host(_report.fleet(hosts()))["lab-ws"]
    research = next(s for s in ws["services"] if s["name"] == "ollama_research")
    assert research["over_budget"] and research["failed_checks"] == ["vram: 3100 of 2963 MiB"]
    assert "ollama_research holds 3100 MiB, over its budget of 2963 MiB" in ws["warnings"]
    assert ws["healthy"] is False and ws["unhealthy"] == ["ollama_research"]


def test_over_committed_gpu_is_warned():
    data = hosts()
    for service in data[0]["plan"]["services"]:
        if service["name"] == "ollama_research":
            service["placement"]["vram_budget_mib"] = 5000
    ws = by_host(_report.fleet(data))["lab-ws"]
    assert ws["gpus"][1]["overcommitted"]
    assert ("GPU 1 (NVIDIA RTX A400) is over-committed: budgets 5000 MiB > total 4094 MiB"
            in ws["warnings"])


def test_cpu_host_has_no_gpu_and_its_services_are_unplaced():
    cpu = by_host(_report.fleet(hosts()))["lab-cpu"]
    assert cpu["gpus"] == [] and cpu["profile"] == "cpu"
    assert [(s["name"], s["placed"], s["healthy"]) for s in cpu["services"]] == [
        ("ollama", False, True), ("docling", False, True)]
    assert cpu["warnings"][0].startswith("No GPU found")


def test_failed_and_unreachable_hosts_are_kept():
    model = _report.fleet(hosts())
    entries = by_host(model)
    assert entries["lab-dual"]["status"] == "failed"
    assert "vram_budget_mib must be > 0" in entries["lab-dual"]["error"]
    assert entries["lab-gone"]["status"] == "unreachable"
    assert entries["lab-gone"]["apply"]["result"] == "unknown"
    assert model["totals"] == {"hosts": 4, "reachable": 2, "gpus": 2,
                               "memory_total_mib": 24564 + 4094,
                               "memory_free_mib": 19705 + 904,
                               "unhealthy_hosts": ["lab-ws", "lab-dual", "lab-gone"]}


def test_unknown_memory_gives_no_split():
    data = [{"host": "odd", "gpus": [{"index": 0, "name": "GPU", "memory_total_mib": None,
                                      "memory_used_mib": None, "memory_free_mib": None}]}]
    gpu = _report.fleet(data)["hosts"][0]["gpus"][0]
    assert (gpu["held_mib"], gpu["others_mib"], gpu["memory_free_mib"]) == (None, None, None)
    assert "ours 0 + others ?, free ? of ? MiB" in "\n".join(_report.table(data))
    assert 'style="width:0.00%"' in _report.html_page(data)


def test_failed_apply_is_a_warning():
    data = hosts()
    data[1]["apply"] = {"result": "rolled_back", "finished_at": None, "runtime": "compose"}
    assert "last apply rolled back" in by_host(_report.fleet(data))["lab-cpu"]["warnings"]


@pytest.mark.parametrize("mutate, message", [
    (lambda h: h.__setitem__(0, "lab-ws"), "hosts[0] must be a dict; got: 'lab-ws'"),
    (lambda h: h[0].__setitem__("host", ""), "hosts[0].host must be a non-empty string; got: ''"),
    (lambda h: h[1].__setitem__("status", "down"),
     "hosts[1].status must be one of ok, failed, unreachable; got: 'down'"),
    (lambda h: h[0]["gpus"][1].__setitem__("memory_total_mib", "4 GB"),
     "hosts[0].gpus[1].memory_total_mib must be a number or null; got: '4 GB'"),
    (lambda h: h[0].__setitem__("apply", {"result": "maybe"}),
     "hosts[0].apply.result must be one of ok, rolled_back, failed, unknown; got: 'maybe'"),
    (lambda h: h[0]["mode"].__setitem__("downtime_s", "slow"),
     "hosts[0].mode.downtime_s must be a number or null; got: 'slow'"),
    (lambda h: h[0].__setitem__("managed_processes", "ollama"),
     "hosts[0].managed_processes must be a list of patterns; got: 'ollama'"),
    (lambda h: h[1].__setitem__("host", "lab-ws"),
     "hosts must name each host once; got twice: lab-ws"),
])
def test_bad_input_names_the_field(mutate, message):
    data = hosts()
    mutate(data)
    with pytest.raises(ValueError) as err:
        _report.fleet(data)
    assert str(err.value) == message


def test_hosts_must_be_a_list():
    with pytest.raises(ValueError, match=r"^hosts must be a list of host entries; got: 'lab-ws'$"):
        _report.fleet("lab-ws")


def test_table():
    lines = _report.table(hosts())
    assert re.match(r"^HOST\s+STATE\s+HEALTH\s+MODE\s+APPLY\s+GPUS\s+WARNINGS$", lines[0])
    assert re.match(r"^lab-ws\s+ok\s+UNHEALTHY\s+chat\s+ok\s+2\s+1$", lines[1])
    assert lines[2] == ("  GPU 0 NVIDIA RTX A5500: ours 4300 + others 559, free 19705 of 24564 "
                        "MiB; ollama 2963, vision 2315")
    assert lines[3] == ("  GPU 1 NVIDIA RTX A400: ours 3100 + others 90, free 904 of 4094 MiB; "
                        "ollama_research 2963")
    assert lines[4] == "  no GPU: docling"
    assert re.match(r"^lab-gone\s+unreachable\s+UNREACHABLE\s+-\s+unknown\s+0\s+0$", lines[-3])
    assert lines[-1] == ("4 host(s), 2 reachable, 2 GPU(s), 20609 of 28658 MiB free; needing "
                         "attention: lab-ws, lab-dual, lab-gone")
    # The model itself is accepted too.
    assert _report.table(_report.fleet(hosts())) == lines


def test_the_page_of_an_unchanged_fleet_keeps_its_time_and_a_changed_one_gets_the_new():
    first = _report.html_page(hosts(), generated_at="2026-11-22T09:00:00+00:00")
    again = _report.html_page(hosts(), generated_at="2026-11-22T10:00:00+00:00", previous=first)
    assert again == first
    changed = hosts()
    changed[0]["gpus"][0]["memory_used_mib"] += 1000
    changed[0]["gpus"][0]["memory_free_mib"] -= 1000
    page = _report.html_page(changed, generated_at="2026-11-22T10:00:00+00:00", previous=first)
    assert page != first and "generated 2026-11-22T10:00:00+00:00" in page
    retitled = _report.html_page(hosts(), title="Lab", generated_at="2026-11-22T10:00:00+00:00",
                                 previous=first)
    assert "generated 2026-11-22T10:00:00+00:00" in retitled
    # Not a page of ours (or none): the new page.
    for previous in ("", "<html>something else</html>", None):
        assert "generated 2026-11-22T10:00:00+00:00" in _report.html_page(
            hosts(), generated_at="2026-11-22T10:00:00+00:00", previous=previous)


def test_page_is_self_contained_and_lists_every_host_and_gpu():
    page = _report.html_page(hosts(), generated_at="2026-11-22T09:00:00+00:00")
    parsed = parse(page)
    tags = {tag for tag, _attrs in parsed.attrs}
    assert "script" not in tags and "link" not in tags and "img" not in tags
    assert not re.search(r"(src|href)=|url\(|@import|https?://", page)
    sections = [a["data-host"] for tag, a in parsed.attrs if a.get("class") == "host"]
    assert sections == ["lab-ws", "lab-cpu", "lab-dual", "lab-gone"]
    bars = [(a["data-host"], a["data-gpu"]) for tag, a in parsed.attrs
            if a.get("class") == "vram-bar"]
    assert bars == [("lab-ws", "0"), ("lab-ws", "1")]
    widths = [a["style"] for tag, a in parsed.attrs if a.get("class", "").startswith("seg ")]
    # 4300, 559 and 19705 of 24564 MiB; 3100, 90 and 904 of 4094 MiB.
    assert widths == ["width:17.51%", "width:2.28%", "width:80.22%",
                      "width:75.72%", "width:2.20%", "width:22.08%"]
    text = " ".join(parsed.text)
    assert "generated 2026-11-22T09:00:00+00:00" in text
    assert "3100 over budget" in text and "unhealthy: vram: 3100 of 2963 MiB" in text
    assert "no GPU" in text and "unreachable" in text


def test_everything_from_hosts_is_escaped():
    data = hosts()
    evil = '<script>alert("x")</script>&'
    data[0]["host"] = "ws<b>"
    data[0]["gpus"][0]["name"] = evil
    data[0]["gpu_warnings"] = [evil]
    data[0]["plan"]["services"][0]["name"] = '"><img src=x onerror=alert(1)>'
    data[0]["health"]["services"][0]["service"] = '"><img src=x onerror=alert(1)>'
    data[2]["error"] = "</div><script>steal()</script>"
    data[0]["mode"]["mode"] = "<i>chat</i>"
    page = _report.html_page(data, title="<title>")
    parsed = parse(page)
    assert {tag for tag, _attrs in parsed.attrs} <= {
        "html", "head", "meta", "title", "style", "body", "h1", "p", "span", "i", "main",
        "section", "h2", "div", "h3", "small", "table", "tr", "th", "td", "ul", "li", "b"}
    assert not any(tag == "i" and not a for tag, a in parsed.attrs)  # only the legend's <i>
    assert "<script>" not in page and "<img" not in page and "<b>\"" not in page
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in page
    assert 'data-host="ws&lt;b&gt;"' in page
    assert "&lt;/div&gt;&lt;script&gt;steal()&lt;/script&gt;" in page
    assert "&lt;title&gt;" in page
    text = "".join(parsed.text)
    assert evil in text and "</div><script>steal()</script>" in text


# ---- what the role records of each host ------------------------------------------------------

def _slurped(document, source="/etc/gpufleet/mode.json"):
    text = document if isinstance(document, str) else json.dumps(document)
    return {"content": base64.b64encode(text.encode()).decode(), "encoding": "base64",
            "source": source}


MODE = {"mode": "chat", "outcome": "switched", "downtime_s": 3.5}
APPLY = {"result": "ok", "runtime": "compose", "changed": True}
READ = {"gpus": [{"index": 0}], "gpu_warnings": ["w"], "plan": {"profile": "cpu"},
        "health": {"healthy": True}, "managed_processes": ["*ollama*"],
        "mode_file": _slurped(MODE), "apply_file": _slurped(APPLY, "/etc/gpufleet/apply.json")}


@pytest.mark.parametrize("result, want", [
    (_slurped(MODE), MODE),
    (_slurped("[1, 2]"), [1, 2]),
    ({"failed": True, "msg": "file not found: /etc/gpufleet/mode.json"}, None),
    ({"skipped": True}, None),
    ({}, None),
])
def test_slurped_json(result, want):
    assert _report.slurped_json(result) == want


@pytest.mark.parametrize("result, message", [
    ("e30=", "result must be a slurp result; got: 'e30='"),
    (_slurped("{broken"), "/etc/gpufleet/mode.json must hold JSON (Expecting property name "
     "enclosed in double quotes: line 1 column 2 (char 1)); got: '{broken'"),
    ({"content": "not base64!", "item": "/x.json"},
     "/x.json: its content is not base64 text; got: 'not base64!'"),
])
def test_slurped_json_bad_input(result, message):
    with pytest.raises(ValueError) as info:
        _report.slurped_json(result)
    assert str(info.value) == message


@pytest.mark.parametrize("ping, error, want", [
    ({"ping": "pong"}, None,
     {"host": "h", "status": "ok", "gpus": [{"index": 0}], "gpu_warnings": ["w"],
      "plan": {"profile": "cpu"}, "health": {"healthy": True}, "mode": MODE, "apply": APPLY,
      "managed_processes": ["*ollama*"]}),
    ({"ping": "pong"}, "Read the GPUs: nvidia-smi failed",
     {"host": "h", "status": "failed", "error": "Read the GPUs: nvidia-smi failed",
      "gpus": [{"index": 0}], "managed_processes": ["*ollama*"]}),
    ({"unreachable": True, "msg": "ssh: connect to host h port 22: No route to host"}, None,
     {"host": "h", "status": "unreachable",
      "error": "ssh: connect to host h port 22: No route to host"}),
    ({"unreachable": True}, None, {"host": "h", "status": "unreachable", "error": "unreachable"}),
])
def test_host_entry(ping, error, want):
    assert _report.host_entry(READ, "h", ping, error) == want


def test_host_entry_without_records_or_facts():
    assert _report.host_entry({"managed_processes": None}, "h", {}) == {
        "host": "h", "status": "ok", "gpus": [], "gpu_warnings": [], "plan": None,
        "health": None, "mode": None, "apply": None, "managed_processes": None}


def test_host_entry_of_a_failed_host_leaves_its_records_unread():
    read = dict(READ, apply_file=_slurped("{broken"))
    assert _report.host_entry(read, "h", {}, "it broke")["status"] == "failed"
    with pytest.raises(ValueError, match=r"^/etc/gpufleet/mode.json must hold JSON"):
        _report.host_entry(read, "h", {})


def test_host_entries_feed_the_fleet_model():
    entries = [_report.host_entry(READ, "a", {}),
               _report.host_entry(READ, "b", {}, "boom"),
               _report.host_entry({}, "c", {"unreachable": True})]
    assert [e["status"] for e in _report.fleet(entries)["hosts"]] == [
        "ok", "failed", "unreachable"]


@pytest.mark.parametrize("read, host, message", [
    (None, "h", "read must be a dict of what the host said; got: None"),
    ({}, "", "host must be a non-empty string; got: ''"),
])
def test_host_entry_bad_input(read, host, message):
    with pytest.raises(ValueError) as info:
        _report.host_entry(read, host)
    assert str(info.value) == message


# ---- a host is judged by its mode ------------------------------------------------------------

GB10 = {"index": 0, "uuid": "GPU-0000", "name": "NVIDIA GB10", "memory_kind": "unified",
        "memory_total_mib": 124610, "memory_free_mib": 90000, "processes": []}
INGESTION = {"name": "ingestion", "exclusive": True, "services": ["vllm", "docling"],
             "description": "vLLM and Docling only (extraction at high concurrency); Ollama "
                            "stopped"}


def judged(verdicts, mode="ingestion", apply_mode="ingestion", legacy=None,
           profile="single-gpu"):
    """A host of one GB10 whose plan runs ``mode`` (the name "ingestion": INGESTION; or a
    mode's dict, or None): vLLM on the GPU, Docling on the CPU, Ollama planned but not active
    (stopped on purpose). ``verdicts``: service -> healthy."""
    if mode == "ingestion":
        mode = dict(INGESTION)
    services = [
        {"name": "ollama", "engine": "ollama", "active": False, "placement": None},
        {"name": "vllm", "engine": "vllm", "active": True,
         "placement": {"gpu_index": 0, "gpu_uuid": "GPU-0000", "vram_budget_mib": 60000}},
        {"name": "docling", "engine": "other", "active": True, "placement": None},
    ]
    health = {"healthy": all(verdicts.values()),
              "unhealthy": [name for name, ok in verdicts.items() if not ok],
              "services": [{"service": name, "healthy": ok, "vram_mib": None, "checks": []}
                           for name, ok in verdicts.items()]}
    apply = {"result": "ok", "runtime": "compose", "services": ["docling", "vllm"]}
    if apply_mode is not None:
        apply["mode"] = apply_mode
    plan = {"profile": profile, "dual_gpu_mode": "ollama", "services": services}
    if mode is not None:
        plan["mode"] = mode
    return [{"host": "lab-spark", "status": "ok", "gpus": [GB10], "plan": plan,
             "health": health, "apply": apply, "mode": legacy}]


def test_a_host_in_ingestion_with_ollama_stopped_is_healthy_and_shows_its_mode():
    model = _report.fleet(judged({"vllm": True, "docling": True}))
    [spark] = model["hosts"]
    assert spark["healthy"] is True and model["totals"]["unhealthy_hosts"] == []
    assert [s["name"] for s in spark["services"]] == ["vllm", "docling"]
    assert (spark["mode"]["mode"], spark["mode"]["exclusive"], spark["mode"]["source"]) == (
        "ingestion", True, "apply")
    assert spark["warnings"] == []
    row = _report.table(model)[1]
    assert row.split() == ["lab-spark", "ok", "healthy", "ingestion", "(exclusive)", "ok", "1",
                           "0"]
    page = _report.html_page(model)
    assert "mode <b>ingestion (exclusive)</b>" in page
    assert 'data-service="ollama"' not in page and 'data-service="vllm"' in page
    assert "dual-GPU mode" not in page


def test_a_service_of_the_mode_that_fails_still_makes_the_host_unhealthy():
    model = _report.fleet(judged({"vllm": False, "docling": True}))
    assert model["hosts"][0]["healthy"] is False
    assert model["totals"]["unhealthy_hosts"] == ["lab-spark"]
    assert _report.table(model)[1].split()[2] == "UNHEALTHY"


@pytest.mark.parametrize("apply_mode, mode, legacy, want", [
    # The apply record's mode, with the plan's exclusive flag when the plan names it too.
    ("ingestion", INGESTION, None, ("ingestion", True, "apply", "ingestion (exclusive)")),
    # An apply record of before the mode was recorded: the plan's mode.
    (None, INGESTION, None, ("ingestion", True, "plan", "ingestion (exclusive)")),
    # A mode that is not exclusive shows without the word.
    (None, dict(INGESTION, name="batch", exclusive=False), None,
     ("batch", False, "plan", "batch")),
    # The retired role's record, read for compatibility: nothing says it was exclusive.
    (None, None, {"mode": "chat", "outcome": "switched"}, ("chat", None, "record", "chat")),
    # A dual-GPU mode is shown with its profile.
    ("vllm", {"name": "vllm", "exclusive": False, "services": None, "description": "d"}, None,
     ("vllm", False, "apply", "dual-gpu/vllm")),
    (None, None, None, (None, None, None, "dual-gpu/ollama")),
], ids=["apply", "plan", "not-exclusive", "legacy-record", "dual-gpu-mode", "none"])
def test_the_mode_shown(apply_mode, mode, legacy, want):
    profile = "dual-gpu" if want[3].startswith("dual-gpu") else "single-gpu"
    model = _report.fleet(judged({"vllm": True}, mode, apply_mode, legacy, profile))
    entry = model["hosts"][0]
    got = entry["mode"] or {"mode": None, "exclusive": None, "source": None}
    assert (got["mode"], got["exclusive"], got["source"], _report._mode_word(entry)) == want


def test_a_stale_mode_switch_record_of_another_mode_shows_no_switch():
    legacy = {"mode": "chat", "outcome": "switched", "downtime_s": 7.4,
              "switched_at": "2026-11-22T08:40:12+00:00"}
    entry = _report.fleet(judged({"vllm": True}, legacy=legacy))["hosts"][0]
    assert (entry["mode"]["mode"], entry["mode"]["outcome"], entry["mode"]["downtime_s"]) == (
        "ingestion", None, None)
    entry = _report.fleet(judged({"vllm": True}, None, None, legacy))["hosts"][0]
    assert (entry["mode"]["mode"], entry["mode"]["outcome"], entry["mode"]["downtime_s"]) == (
        "chat", "switched", 7.4)


def test_an_apply_of_another_mode_than_the_plan_is_warned():
    model = _report.fleet(judged({"vllm": True, "docling": True}, apply_mode="chat"))
    entry = model["hosts"][0]
    assert entry["mode"]["mode"] == "chat" and entry["mode"]["exclusive"] is None
    assert entry["warnings"] == ["the last apply ran mode chat; the host's plan is mode "
                                 "ingestion (its services were checked)"]


@pytest.mark.parametrize("change, message", [
    (lambda h: h["plan"].__setitem__("mode", "ingestion"),
     "hosts[0].plan.mode must be a dict with a name; got: 'ingestion'"),
    (lambda h: h["plan"].__setitem__("mode", {"exclusive": True}),
     "hosts[0].plan.mode must be a dict with a name; got: {'exclusive': True}"),
    (lambda h: h["apply"].__setitem__("mode", ["chat"]),
     "hosts[0].apply.mode must be a mode's name; got: ['chat']"),
    (lambda h: h["apply"].__setitem__("mode", ""),
     "hosts[0].apply.mode must be a mode's name; got: ''"),
], ids=["plan-mode-a-string", "plan-mode-no-name", "apply-mode-a-list", "apply-mode-empty"])
def test_bad_modes(change, message):
    data = judged({"vllm": True})
    change(data[0])
    with pytest.raises(ValueError) as info:
        _report.fleet(data)
    assert str(info.value) == message
