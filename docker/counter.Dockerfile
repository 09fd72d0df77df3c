# The example counter app (examples/counter): the Litestream guide's `myapp`, keeping its count
# in raftlite. Same recipe as docker/Dockerfile: the build context is assembled by
# docker/build-image.sh (APP=counter) from the host-built binary and the libraries `ldd`
# lists; nothing is pulled. Non-root, needs no writable path at all.
#
#   APP=counter docker/build-image.sh                     # FROM scratch, tag raftlite-counter:dev
ARG BASE_IMAGE=scratch
FROM ${BASE_IMAGE}
COPY rootfs/ /
USER 10001:10001
ENV PORT=8080 \
    RAFTLITE_ADDR=raftlite:7000
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/raftlite-counter"]
