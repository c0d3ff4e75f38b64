#!/usr/bin/python
# Copyright (c) gpufleet.inference contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: downloads
short_description: Plan and fetch the images, Ollama models and Hugging Face weights of a host
version_added: 0.1.0
description:
  - Tells, for each item the host's services need, whether it is there already, how many bytes
    fetching it transfers and onto which filesystem they land; with O(state=present) fetches
    what is missing, showing progress on the controller while it runs.
  - V(image) - present when the engine has the reference (C(docker image inspect)). Bytes are
    the compressed layers of the manifest (read from the registry, with the anonymous token
    flow or the Basic credentials C(docker login) stored) whose layer chain the engine does
    not have. Fetched with C(docker pull), so the CLI's logins and credential helpers apply.
  - V(ollama) - present when Ollama's models directory O(items[].models_dir) has the model's
    manifest (C(manifests/<host>/<namespace>/<model>/<tag>)) and every blob it names. Bytes
    are the blobs not there yet. Fetched by the Ollama server at O(items[].url) with
    C(POST /api/pull) (waiting for the server to answer first); from a registry other than
    C(registry.ollama.ai) the model is pulled under that registry's name and copied to the
    catalog's name with C(POST /api/copy). With O(ollama_source_dir) the model is copied
    from that directory instead, no server needed.
  - V(huggingface) - present when the Hugging Face cache under O(items[].hf_home) resolves
    O(items[].revision) to a snapshot with C(config.json) and all its weights. Bytes are the
    files vLLM would load (C(*.safetensors), else C(*.bin), else C(*.pt), and the config,
    tokenizer and generation files at the top of the repo) whose blob is not cached. Fetched
    into huggingface_hub's cache layout (blobs, relative snapshot links, C(refs/<revision>)
    written last), each file checked against its sha256 or git blob id, a broken-off file
    resumed by the next run.
  - O(state=planned) changes nothing; every item is checked and all problems are reported
    together in one failure (an unknown model, a repo that needs C(HF_TOKEN), a registry that
    cannot be reached). O(state=present) plans first and fails before anything changes when
    the plan has a problem, then fetches the missing items in order and stops at the first
    failure, naming the item and quoting the tool or server; what was fetched stays.
  - Progress - the action plugin runs the module asynchronously on the host with a progress
    file in the remote temporary directory, polls it about every 2 seconds and prints lines
    such as C(lab-dual - pulling ollama/ollama:latest 3/7 layers 512.0/1650.3 MiB) (the host,
    a colon and the text; the first line of each item, at most one every 5 seconds while it
    goes, and the one that ends it),
    then returns the module's result.
    O(state=planned) and check mode run the module directly. A failure of the module is the
    task's failure with its message.
  - The token of O(hf_token_file) is read on the host and only sent to the hub in the
    Authorization header; it is in no result, message or progress line, and the module masks
    it in anything it returns.
author:
  - gpufleet.inference contributors (@gpufleet)
options:
  downloads:
    description:
      - A plan's C(downloads) (C(services_plan.downloads) of M(gpufleet.inference.services_plan),
        with C(items) and C(options)), instead of O(items). Its items of the kinds O(kinds) are
        fetched, and its options apply where the task gives none.
      - Exactly one of O(items) and O(downloads).
    type: dict
  kinds:
    description: With O(downloads), the kinds of items to take (all three when not given).
    type: list
    elements: str
    choices: [image, ollama, huggingface]
  models_dir:
    description:
      - With O(downloads), the models directory of every V(ollama) item (the systemd instances'
        one, where it differs from the containers').
    type: path
  items:
    description:
      - What the services need, in the order to fetch it. Exactly one of O(items) and
        O(downloads).
    type: list
    elements: dict
    suboptions:
      kind:
        description: What the item is.
        type: str
        required: true
        choices: [image, ollama, huggingface]
      name:
        description:
          - V(image) - the reference the engine pulls (already rewritten for a mirror).
          - V(ollama) - the model as the catalog names it (C(llama3.2:3b)).
          - V(huggingface) - the repo id (C(Qwen/Qwen2.5-1.5B-Instruct)).
        type: str
        required: true
      services:
        description: The services that need the item (for messages).
        type: list
        elements: str
        default: []
      insecure:
        description: V(image) - the registry speaks plain HTTP (an C(insecure-registries) entry).
        type: bool
        default: false
      models_dir:
        description: V(ollama) - the host path the Ollama server uses as C(OLLAMA_MODELS).
        type: path
      url:
        description:
          - V(ollama) - the base URL of the Ollama server that pulls (C(http://127.0.0.1:11434)).
          - Needed with O(state=present) unless O(ollama_source_dir) is given.
        type: str
      revision:
        description: V(huggingface) - the branch, tag or commit.
        type: str
        default: main
      hf_home:
        description: V(huggingface) - the host path of C(HF_HOME) (the cache is C(<hf_home>/hub)).
        type: path
  state:
    description:
      - V(planned) reports presence, sizes and problems and changes nothing; V(present)
        fetches what is missing. Check mode is V(planned).
    type: str
    choices: [planned, present]
    default: present
  ollama_registry:
    description:
      - The registry Ollama models come from (V(registry.ollama.ai) when neither the task nor
        O(downloads) gives one). Another one (a mirror) is pulled from as
        C(<registry>/library/<model>:<tag>) and copied to the catalog's name.
      - A registry must answer a blob request with a redirect (as registry.ollama.ai does);
        against one that serves blobs itself Ollama fails with
        C(http - no Location header in response) (ollama/ollama#7244).
    type: str
  ollama_insecure:
    description:
      - O(ollama_registry) speaks plain HTTP (the pull is made with C(insecure)); false when not
        given.
    type: bool
  ollama_source_dir:
    description:
      - An offline source in Ollama's own layout on the host
        (C(manifests/registry.ollama.ai/library/<model>/<tag>), C(blobs/sha256-<hex>)).
      - Missing models are copied from there, blobs checked against their sha256 and the
        manifest written last; no Ollama server is needed.
    type: path
  hf_endpoint:
    description:
      - The Hugging Face hub (C(HF_ENDPOINT)), or a mirror of it; V(https://huggingface.co) when
        not given.
    type: str
  hf_token_file:
    description:
      - An env file on the host with a C(HF_TOKEN=...) line (mode 0600). No file, or no value,
        means no token.
    type: path
  engine:
    description:
      - The container engine that pulls the V(image) items and keeps them.
      - V(podman) - its storage root is read from C(podman info), and each image reference is
        named in full (C(ollama/ollama:0.6.2) is pulled as C(docker.io/ollama/ollama:0.6.2), as
        Docker reads it) so that no search registry is asked.
    type: str
    choices: [docker, podman]
    default: docker
  docker_bin:
    description: The engine's CLI (a name on C(PATH) or a path); O(engine) when not given.
    type: str
  timeout:
    description: Seconds the whole fetch may take.
    type: int
    default: 3600
  progress_file:
    description:
      - A file on the host to which the module appends one JSON line per progress event
        (C(item), C(kind), C(name), C(text), C(final), C(done_bytes), C(total_bytes)). The action
        plugin sets it; set it only when running the module without the action.
    type: path
extends_documentation_fragment:
  - gpufleet.inference.attributes
attributes:
  check_mode:
    support: full
    details: Check mode plans, as O(state=planned) does.
  diff_mode:
    support: none
  idempotent:
    support: full
    details: A second run finds everything present and fetches nothing.
requirements:
  - The docker CLI (or podman, O(engine)) on the host for V(image) items.
notes:
  - Interrupting the playbook does not undo what was fetched; a re-run fetches only what is
    still missing (a partial Hugging Face file is resumed or fetched again).
seealso:
  - module: gpufleet.inference.services_plan
"""

EXAMPLES = r"""
- name: Tell what the first run downloads
  gpufleet.inference.downloads:
    state: planned
    items:
      - {kind: image, name: "ollama/ollama:latest", services: [ollama]}
      - kind: ollama
        name: "llama3.2:3b"
        services: [ollama]
        models_dir: /srv/gpufleet/models/ollama
      - kind: huggingface
        name: Qwen/Qwen2.5-1.5B-Instruct
        services: [vllm]
        hf_home: /srv/gpufleet/hf
  register: needed

- name: Fetch what is missing, from a lab mirror
  gpufleet.inference.downloads:
    state: present
    ollama_registry: registry.lab:5000
    ollama_insecure: true
    hf_endpoint: http://hub.lab:8080
    hf_token_file: /etc/gpufleet/hf-token.env
    items:
      - kind: image
        name: "registry.lab:5000/ollama/ollama:latest"
        insecure: true
        services: [ollama]
      - kind: ollama
        name: "llama3.2:3b"
        services: [ollama]
        models_dir: /srv/gpufleet/models/ollama
        url: http://127.0.0.1:11434
      - kind: huggingface
        name: meta-llama/Llama-3.2-3B-Instruct
        services: [vllm]
        hf_home: /srv/gpufleet/hf
"""

RETURN = r"""
downloads:
  description: One entry per item, in the order of O(items).
  returned: always
  type: list
  elements: dict
  contains:
    kind:
      description: The item's kind.
      type: str
    name:
      description: The item's name.
      type: str
    services:
      description: The services that need it.
      type: list
      elements: str
    present:
      description: It was on the host before this run.
      type: bool
    bytes:
      description:
        - Bytes fetching it transfers, as planned (0 when present). What an earlier item
          brings (layers of a shared base image, a blob two models share) counts for that
          item only, as the items are fetched in order.
        - Null when the registry could not be read but C(docker pull) may (a login kept by a
          credential helper).
      type: int
    fetched_bytes:
      description: Bytes really transferred by this run (0 when present or not fetched).
      type: int
    filesystem:
      description: The mount point the bytes land on.
      type: str
    error:
      description: Why the item cannot be fetched (only when the plan found a problem).
      type: str
      returned: when the item has a problem
  sample:
    - {kind: ollama, name: "llama3.2:3b", services: [ollama], present: false,
       bytes: 2019393189, fetched_bytes: 0, filesystem: /}
by_filesystem:
  description: Planned bytes and free bytes per mount point.
  returned: always
  type: dict
  sample: {"/": {"bytes": 2019393189, "free_bytes": 51234567890}}
total_bytes:
  description: The planned bytes of all items.
  returned: always
  type: int
changed:
  description: Something was fetched.
  returned: always
  type: bool
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.gpufleet.inference.plugins.module_utils import _downloads

ITEM_OPTIONS = dict(
    kind=dict(type="str", required=True, choices=list(_downloads.KINDS)),
    name=dict(type="str", required=True),
    services=dict(type="list", elements="str", default=[]),
    insecure=dict(type="bool", default=False),
    models_dir=dict(type="path"),
    url=dict(type="str"),
    revision=dict(type="str", default="main"),
    hf_home=dict(type="path"),
)
ARGUMENT_SPEC = dict(
    items=dict(type="list", elements="dict", options=ITEM_OPTIONS),
    downloads=dict(type="dict"),
    kinds=dict(type="list", elements="str", choices=list(_downloads.KINDS)),
    models_dir=dict(type="path"),
    state=dict(type="str", default="present", choices=list(_downloads.STATES)),
    ollama_registry=dict(type="str"),
    ollama_insecure=dict(type="bool"),
    ollama_source_dir=dict(type="path"),
    hf_endpoint=dict(type="str"),
    hf_token_file=dict(type="path", no_log=False),
    engine=dict(type="str", default="docker", choices=list(_downloads.ENGINES)),
    docker_bin=dict(type="str"),
    timeout=dict(type="int", default=3600),
    progress_file=dict(type="path"),
)
# Where an option is not given (by the task or the plan's downloads.options).
OPTION_DEFAULTS = {"ollama_registry": _downloads.OLLAMA_REGISTRY, "ollama_insecure": False,
                   "hf_endpoint": "https://huggingface.co"}


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True,
                           required_one_of=[("items", "downloads")],
                           mutually_exclusive=[("items", "downloads")])
    try:
        p = _downloads.expand(module.params)
    except ValueError as exc:
        module.fail_json(msg="downloads: %s" % exc)
    for key, value in OPTION_DEFAULTS.items():
        if p.get(key) is None:
            p[key] = value
    try:
        token = _downloads.read_token(p["hf_token_file"])
    except ValueError as exc:
        module.fail_json(msg="downloads: %s" % exc)
    if token:
        module.no_log_values.add(token)
        mode = os.stat(p["hf_token_file"]).st_mode & 0o777
        if mode & 0o077:
            module.warn("hf_token_file %s has mode %o: others can read HF_TOKEN; make it 0600"
                        % (p["hf_token_file"], mode))
    timeout_bin = module.get_bin_path("timeout")
    docker = module.get_bin_path(p["docker_bin"] or p["engine"])

    def run(argv):
        if timeout_bin:
            argv = [timeout_bin, "--kill-after=2", str(_downloads.COMMAND_TIMEOUT_S), *argv]
        rc, out, err = module.run_command(argv, environ_update={"LANG": "C", "LC_ALL": "C"})
        if rc in (124, 137) and timeout_bin:
            err = "%s did not answer within %d seconds and was stopped" % (
                " ".join(argv[3:]), _downloads.COMMAND_TIMEOUT_S)
        return rc, out, err

    options = {key: p[key] for key in ("ollama_registry", "ollama_insecure",
                                       "ollama_source_dir", "hf_endpoint", "timeout")}
    options.update(state="planned" if module.check_mode else p["state"], hf_token=token)
    progress = _downloads.Progress(p["progress_file"])
    try:
        host = _downloads.Host(run, docker, engine=p["engine"])
        result, failure = _downloads.run(p["items"], options, host, progress)
    except ValueError as exc:
        module.fail_json(msg="downloads: %s" % exc)
    for warning in result.pop("warnings"):
        module.warn(warning)
    if failure:
        module.fail_json(msg=failure, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
