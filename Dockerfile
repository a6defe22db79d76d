# The dockhand image: nothing but the three static binaries, to copy from:
#   COPY --from=dockhand /entrypoint /healthcheck /usr/local/bin/
# Build it after scripts/build-static (which writes target/static/):
#   docker build -t dockhand .
# For ARM64 (scripts/build-static also writes target/static/aarch64/), with BuildKit:
#   docker build --platform linux/arm64 --build-arg STATIC=target/static/aarch64 -t dockhand:arm64 .
# (the classic builder cannot build for another platform)
FROM scratch
ARG STATIC=target/static
COPY ${STATIC}/entrypoint ${STATIC}/backup ${STATIC}/healthcheck /
ENTRYPOINT ["/entrypoint"]
