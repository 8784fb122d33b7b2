# syntax=docker/dockerfile:1
# hyla-server for NVIDIA GPU nodes: built in the CUDA devel image with the project's own
# scripts/setup.sh, run in the CUDA runtime image as a non-root user.
#
#   docker build -t registry.example.com/hyla:0.1.0-cuda .
#   docker run --gpus all -p 50051:50051 -p 9464:9464 registry.example.com/hyla:0.1.0-cuda
#
# Ubuntu 24.04 ships the same gRPC 1.51, protobuf 3.21, Abseil 20220623 and prometheus-cpp 1.0
# as Debian 12, so scripts/setup.sh installs the same packages here. The shared libraries the
# binaries need are copied from the build stage (found with ldd), so the runtime stage needs no
# -dev packages and no package names of its own. See deploy/README.md.
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

# ---- build -------------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG HYLA_JOBS=8
ENV DEBIAN_FRONTEND=noninteractive
WORKDIR /src
COPY . .
# scripts/setup.sh --no-build installs the packages hyla needs (the same list as a developer
# machine; the deployment-check venv is skipped); then only the two programs are built.
RUN HYLA_SKIP_DEPLOY_VENV=1 scripts/setup.sh --no-build \
 && cmake -S /src -B /src/build -G Ninja -DCMAKE_BUILD_TYPE=Release -DHYLA_CUDA=ON \
      -DHYLA_BUILD_SERVICE=ON \
 && cmake --build /src/build --target hyla-server hyla -j "${HYLA_JOBS}" \
 && mkdir -p /opt/rootfs/usr/local/bin /opt/rootfs/usr/local/share/hyla/models \
 && cp /src/build/service/hyla-server /src/build/service/hyla /opt/rootfs/usr/local/bin/ \
 && cp -r /src/models/default /opt/rootfs/usr/local/share/hyla/models/ \
 && ldd /opt/rootfs/usr/local/bin/hyla-server /opt/rootfs/usr/local/bin/hyla \
    | awk '/=> \// {print $3}' | sort -u \
    | grep -vE '/(libc|libm|libdl|libpthread|librt|ld-linux[^/]*)\.so' \
    | grep -vE '/(libcuda|libcudart|libcublas[^/]*|libnvidia[^/]*)\.so' \
    | xargs -r -I{} cp -L --parents {} /opt/rootfs/ \
 && /opt/rootfs/usr/local/bin/hyla-server --help >/dev/null

# ---- runtime -----------------------------------------------------------------------------------
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
COPY --from=build /opt/rootfs/ /
RUN ldconfig \
 && groupadd --system --gid 10001 hyla \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin hyla \
 && /usr/local/bin/hyla-server --help >/dev/null
USER 10001:10001
# gRPC (hyla.v1.Hyla, grpc.health.v1, reflection) and Prometheus /metrics.
EXPOSE 50051 9464
# For plain `docker run`; Kubernetes ignores it and uses the gRPC probes of deploy/.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
  CMD ["/usr/local/bin/hyla", "--server", "127.0.0.1:50051", "--timeout", "3s", "health"]
# No --model: the embedded default model in /usr/local/share/hyla/models/default.
ENTRYPOINT ["/usr/local/bin/hyla-server"]
CMD ["--listen=0.0.0.0:50051", "--metrics-listen=0.0.0.0:9464"]
