# Stand-in of vllm/vllm-openai (pushed as registry.lab:5000/vllm/vllm-openai:latest): the real
# image's entrypoint is `vllm serve`, the model and flags come as the command.
ARG STANDIN
FROM ${STANDIN}
EXPOSE 8000
ENTRYPOINT ["/usr/bin/vllm", "serve"]
