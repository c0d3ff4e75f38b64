#!/usr/bin/env bash
# Put community.docker, ansible.posix and community.library_inventory_filtering_v1 on the
# collections path (.build/collections) without Galaxy (unreachable here): they come from the
# PyPI `ansible` bundle wheel, pinned. Idempotent: does nothing when the pinned version is there.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
ANSIBLE_BUNDLE=${ANSIBLE_BUNDLE:-12.3.0}
PY=${PYTHON:-$ROOT/.venv/bin/python}
DEST=$ROOT/.build/collections/ansible_collections
CACHE=$ROOT/.build/wheels
STAMP=$DEST/.vendored-ansible-$ANSIBLE_BUNDLE
COLLECTIONS=(community/docker ansible/posix community/library_inventory_filtering_v1)

if [[ -e $STAMP ]]; then
    exit 0
fi
mkdir -p "$CACHE" "$DEST"
wheel=$(ls "$CACHE"/ansible-"$ANSIBLE_BUNDLE"-py3-none-any.whl 2>/dev/null || true)
if [[ -z $wheel ]]; then
    "$PY" -m pip download --quiet --disable-pip-version-check --no-deps "ansible==$ANSIBLE_BUNDLE" -d "$CACHE"
    wheel=$(ls "$CACHE"/ansible-"$ANSIBLE_BUNDLE"-py3-none-any.whl)
fi
"$PY" - "$wheel" "$DEST" "${COLLECTIONS[@]}" <<'PY'
import os, shutil, sys, zipfile
wheel, dest, wanted = sys.argv[1], sys.argv[2], sys.argv[3:]
with zipfile.ZipFile(wheel) as zf:
    for coll in wanted:
        prefix = "ansible_collections/%s/" % coll
        target = os.path.join(dest, coll)
        shutil.rmtree(target, ignore_errors=True)
        names = [n for n in zf.namelist() if n.startswith(prefix)]
        if not names:
            sys.exit("%s is not in %s" % (coll, wheel))
        for name in names:
            path = os.path.join(dest, name[len("ansible_collections/"):])
            if name.endswith("/"):
                continue
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with zf.open(name) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out)
        print("vendored %s from %s" % (coll, os.path.basename(wheel)))
PY
rm -f "$DEST"/.vendored-ansible-*
touch "$STAMP"
