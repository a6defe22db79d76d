# The dockhand image: nothing but the three static binaries, to copy from:
#   COPY --from=dockhand /entrypoint /healthcheck /usr/local/bin/
# Build it after scripts/build-static (which writes target/static/ and, for ARM64,
# target/static/aarch64/):
#   docker build -t dockhand .
#   docker build --no-cache --platform linux/arm64 --build-arg ARCH=arm64 -t dockhand:arm64 .
# (Stages, not an ARG in a COPY: Docker's classic builder can then build for another
# platform too. --no-cache keeps its amd64 layers out of the arm64 build.)
ARG ARCH=amd64

FROM scratch AS amd64
COPY target/static/entrypoint target/static/backup target/static/healthcheck /

FROM scratch AS arm64
COPY target/static/aarch64/entrypoint target/static/aarch64/backup target/static/aarch64/healthcheck /

FROM ${ARCH}
ENTRYPOINT ["/entrypoint"]
