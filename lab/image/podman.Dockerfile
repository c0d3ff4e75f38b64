# The simulated GPU host that runs its services with Podman: podman-base (mmdebstrap, trixie)
# + the lab's own files (lab/image/build.sh stages them).
ARG BASE
FROM ${BASE}
ARG RUNTIME_TAG
COPY . /
RUN for s in ollama vllm docling-serve vision-server nvidia-smi; do \
        ln -sf /opt/gpufleet-lab/servers/$s /usr/local/bin/$s; done \
 && echo "$RUNTIME_TAG" > /opt/gpufleet-lab/runtime-image \
 && systemctl enable gpufleet-nvml-relay.service gpufleet-lab-devices.service >/dev/null 2>&1
LABEL org.gpufleet.lab.role=host org.gpufleet.lab.engine=podman org.gpufleet.lab.runtime=${RUNTIME_TAG}
CMD ["/sbin/init"]
