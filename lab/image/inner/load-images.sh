#!/bin/sh
# Runs INSIDE a simulated host: make the stand-in server images under the names the real
# images have, in the host's own engine. The runtime image arrives on stdin
# (`docker save | docker exec -i HOST sh load-images.sh`) unless it is already there.
set -eu
rt=$(cat /opt/gpufleet-lab/runtime-image)
if docker image inspect "$rt" >/dev/null 2>&1; then
    cat >/dev/null
else
    docker load -q >/dev/null
fi
docker build -q --build-arg "RUNTIME=$rt" -t gpufleet-lab/standin:latest \
    -f /opt/gpufleet-lab/inner/Dockerfile /opt/gpufleet-lab >/dev/null
flavor() {  # tag, then Dockerfile lines
    tag=$1
    shift
    { echo 'FROM gpufleet-lab/standin:latest'; printf '%s\n' "$@"; } | docker build -q -t "$tag" - >/dev/null
}
flavor ollama/ollama:latest 'ENV OLLAMA_HOST=0.0.0.0:11434' 'EXPOSE 11434' \
    'ENTRYPOINT ["/usr/bin/ollama"]' 'CMD ["serve"]'
flavor vllm/vllm-openai:latest 'EXPOSE 8000' 'ENTRYPOINT ["/usr/bin/vllm", "serve"]'
flavor quay.io/docling-project/docling-serve:latest 'EXPOSE 5001' 'CMD ["/usr/bin/docling-serve", "run"]'
flavor gpufleet-lab/vision:latest 'EXPOSE 8002' 'CMD ["/usr/bin/vision-server"]'
docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -v '<none>' | sort
