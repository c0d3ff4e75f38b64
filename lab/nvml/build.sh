#!/bin/sh
# Build the stand-in libnvidia-ml.so.1 (lab/nvml/README.md).
#
#   lab/nvml/build.sh OUTDIR [EXTRA GCC FLAGS...]   -> OUTDIR/libnvidia-ml.so.1
#
# Extra flags go to gcc as they are: -Werror, or -DOMIT_<function> to leave one of the
# guarded versioned functions out (a library older than the bindings).
set -eu
if [ "$#" -lt 1 ]; then
    echo "usage: $0 OUTDIR [EXTRA GCC FLAGS...]" >&2
    exit 2
fi
out=$1
shift
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
exec "${CC:-gcc}" -std=gnu11 -Wall -Wextra -O2 -shared -fPIC -fvisibility=hidden \
    -Wl,-soname,libnvidia-ml.so.1 -Wl,--no-undefined "$@" \
    -o "$out/libnvidia-ml.so.1" "$here/libnvidia-ml.c" -lpthread
