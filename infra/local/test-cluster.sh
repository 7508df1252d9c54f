#!/usr/bin/env bash
# `make test-cluster`: build the CPU component image on this machine and run the pipeline with every step in its
# own container of it (tests/cluster, pipelines/containers.py). infra/README.md "Build and run the image on one
# machine" explains each step. Needs root on Debian bookworm; installs only Debian and PyPI packages:
#   docker.io, mmdebstrap   the Docker Engine (20.10: BuildKit built in) and the base image's root filesystem
#   .venv (make setup)      the project, kfp and the docker SDK from requirements.lock
# No container registry is used: the base image is made from Debian packages (mmdebstrap + docker import) and
# passed as PYTHON_IMAGE; pip in the build reaches PyPI through this machine's CA certificates (baked into that
# base) and takes the lock's CPU torch wheel from pip's own configuration (find-links), handed in build/wheels/.
set -euo pipefail
cd "$(dirname "$0")/../.."

BASE_IMAGE=${BASE_IMAGE:-softprompt-local/python:3.11-bookworm}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
DOCKER=/usr/bin/docker   # Debian's docker.io CLI: its `docker build` drives the engine's BuildKit without buildx
LOG=${LOG:-build/test-cluster}
mkdir -p "$LOG"

say() { printf '\n== %s\n' "$*"; }
die() { printf 'test-cluster: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (apt-get, dockerd, mmdebstrap); run it as root on a Debian bookworm machine"

say "Debian packages: docker.io mmdebstrap"
if [ "$(dpkg-query -W -f='${Status}\n' docker.io mmdebstrap 2>/dev/null | grep -c 'install ok installed')" != 2 ]; then
  DEBIAN_FRONTEND=noninteractive apt-get update -q
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker.io mmdebstrap
fi

say "Docker Engine (no bridge network: builds and steps use the host's network)"
if ! "$DOCKER" info >/dev/null 2>&1; then
  nohup dockerd --bridge=none --iptables=false --ip-masq=false >"$LOG/dockerd.log" 2>&1 &
  for _ in $(seq 60); do "$DOCKER" info >/dev/null 2>&1 && break; sleep 1; done
  "$DOCKER" info >/dev/null 2>&1 || die "dockerd did not start; its log: $LOG/dockerd.log"
fi

say "base image $BASE_IMAGE (Debian bookworm, python3.11 + venv, this machine's CA certificates)"
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  nice -n 10 mmdebstrap --variant=minbase \
    --include=python3.11,python3.11-venv,python-is-python3,ca-certificates \
    --customize-hook='mkdir -p "$1/usr/local/share/ca-certificates"; cp /usr/local/share/ca-certificates/*.crt "$1/usr/local/share/ca-certificates/" 2>/dev/null || true; chroot "$1" update-ca-certificates' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    bookworm "$LOG/base.tar" "$DEBIAN_MIRROR"
  "$DOCKER" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'ENV LANG=C.UTF-8' \
    "$LOG/base.tar" "$BASE_IMAGE"
  rm -f "$LOG/base.tar"
fi

say "project venv (make setup)"
[ -x .venv/bin/python ] || make setup

say "the lock's CPU torch wheel, from pip's configuration (never a CUDA build: the pin is +cpu)"
TORCH_PIN=$(grep '^torch==' requirements.lock)
mkdir -p build/wheels
ls build/wheels/torch-*.whl >/dev/null 2>&1 \
  || .venv/bin/pip download --quiet --no-deps --dest build/wheels "$TORCH_PIN" \
  || die "pip cannot find $TORCH_PIN (pip config list: find-links should name a directory holding it)"

say "make image VARIANT=cpu (infra/docker/Dockerfile)"
DOCKER_BUILDKIT=1 nice -n 10 make image VARIANT=cpu DOCKER="$DOCKER" DOCKER_BUILD_FLAGS="--network host \
  --build-arg PYTHON_IMAGE=$BASE_IMAGE --build-arg PIP_CERT=/etc/ssl/certs/ca-certificates.crt --build-arg PIP_RETRIES=0"
IMAGE=$(.venv/bin/python -m softprompt.cluster image --variant cpu)
echo "image $IMAGE, digest $(cat build/image-digest-cpu.txt), code version $("$DOCKER" run --rm --network host \
  --entrypoint sh "$IMAGE" -c 'echo $SOFTPROMPT_GIT_SHA')"

say "the pipeline, each step in its own container (tests/cluster)"
# the docker SDK (kfp.local's DockerRunner) talks to the engine's socket; PATH: Debian's CLI first
PATH=/usr/bin:$PATH SOFTPROMPT_CLUSTER_IMAGE="$IMAGE" nice -n 10 .venv/bin/pytest tests/cluster -v -s "$@"
