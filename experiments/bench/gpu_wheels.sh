#!/usr/bin/env bash
# Download into .whl/ (git-ignored) what a GPU machine without a package index lacks for the `gpu`
# extra: the mamba-ssm source package and einops (a pure-Python wheel). Run it here, on a machine
# that reaches PyPI; .whl/ then travels with the working tree, and on the GPU machine
#     bash experiments/bench/build_mamba_ssm.sh
# builds and installs mamba-ssm from it. Idempotent: files already in .whl/ are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAMBA_SSM=2.3.2.post1
EINOPS=0.8.2
mkdir -p .whl

if [ ! -f ".whl/mamba_ssm-$MAMBA_SSM.tar.gz" ]; then
  # pip prepares the sdist's metadata by running its setup.py, which imports torch: use the installed
  # torch (--no-build-isolation) and skip the CUDA part (MAMBA_SKIP_CUDA_BUILD), which a CPU torch
  # cannot configure; the download itself is the unmodified source package.
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    pip download --no-deps --no-binary :all: --no-build-isolation "mamba-ssm==$MAMBA_SSM" -d .whl
fi
if [ ! -f ".whl/einops-$EINOPS-py3-none-any.whl" ]; then
  pip download --no-deps --only-binary=:all: --python-version 3.12 "einops==$EINOPS" -d .whl
fi
ls -l .whl
