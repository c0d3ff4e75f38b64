# Stand-in of quay.io/docling-project/docling-serve (pushed as
# registry.lab:5000/quay.io/docling-project/docling-serve:latest): `docling-serve run`, port 5001.
ARG STANDIN
FROM ${STANDIN}
EXPOSE 5001
CMD ["/usr/bin/docling-serve", "run"]
