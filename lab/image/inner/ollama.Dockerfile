# Stand-in of ollama/ollama (pushed as registry.lab:5000/ollama/ollama:latest): the real image
# sets OLLAMA_HOST=0.0.0.0:11434 and runs `ollama serve`.
ARG STANDIN
FROM ${STANDIN}
ENV OLLAMA_HOST=0.0.0.0:11434
EXPOSE 11434
ENTRYPOINT ["/usr/bin/ollama"]
CMD ["serve"]
