#!/usr/bin/env bash
# Download into .whl/ (git-ignored) what a GPU machine without a package index lacks: the `gpu`
# extra (the mamba-ssm and causal-conv1d source packages, einops) and the entry point's Hydra (hydra-core, omegaconf,
# antlr4-python3-runtime; antlr4's 4.9.3 is a source package: built here into a pure-Python wheel).
# Run it here, on a machine that reaches PyPI; .whl/ then travels with the working tree (name it in
# the device call's carry), and on the GPU machine
#     bash experiments/bench/build_mamba_ssm.sh      # builds mamba-ssm, installs all into /tmp/site
# Torch, Lightning, Triton and transformers are already on the lent H200 image; wandb is not (runs
# there use logger=csv). Idempotent: files already in .whl/ are not fetched again.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAMBA_SSM=2.3.2.post1
CAUSAL_CONV1D=1.7.0
EINOPS=0.8.2
HYDRA=1.3.2
OMEGACONF=2.3.0
ANTLR4=4.9.3
mkdir -p .whl

if [ ! -f ".whl/mamba_ssm-$MAMBA_SSM.tar.gz" ]; then
  # pip prepares the sdist's metadata by running its setup.py, which imports torch: use the installed
  # torch (--no-build-isolation) and skip the CUDA part (MAMBA_SKIP_CUDA_BUILD), which a CPU torch
  # cannot configure; the download itself is the unmodified source package.
  MAMBA_FORCE_BUILD=TRUE MAMBA_SKIP_CUDA_BUILD=TRUE \
    pip download --no-deps --no-binary :all: --no-build-isolation "mamba-ssm==$MAMBA_SSM" -d .whl
fi
if [ ! -f ".whl/causal_conv1d-$CAUSAL_CONV1D.tar.gz" ]; then  # the same for causal-conv1d's setup.py
  CAUSAL_CONV1D_FORCE_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE \
    pip download --no-deps --no-binary :all: --no-build-isolation "causal-conv1d==$CAUSAL_CONV1D" -d .whl
fi
if [ ! -f ".whl/einops-$EINOPS-py3-none-any.whl" ]; then
  pip download --no-deps --only-binary=:all: --python-version 3.12 "einops==$EINOPS" -d .whl
fi
for wheel in "hydra_core==$HYDRA" "omegaconf==$OMEGACONF"; do
  name=${wheel%%==*}
  ls .whl/"$name"-*.whl >/dev/null 2>&1 || \
    pip download --no-deps --only-binary=:all: --python-version 3.12 "$wheel" -d .whl
done
ls .whl/antlr4_python3_runtime-$ANTLR4-*.whl >/dev/null 2>&1 || \
  pip wheel --no-deps "antlr4-python3-runtime==$ANTLR4" -w .whl
ls -l .whl
