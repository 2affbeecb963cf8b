#!/usr/bin/env bash
# Run ON the GPU machine (nvcc, a CUDA torch, no package index): build mamba-ssm's wheel for sm_90
# only from the source package that experiments/bench/gpu_wheels.sh put in .whl/, and install it with
# einops (and Hydra's wheels) into /tmp/site (then: PYTHONPATH=/tmp/site python ...). Idempotent: a wheel already built
# in .whl/ is installed without building again. ~2 min with 16 cores (nvcc 13.0, torch 2.11+cu130).
#
# Why the patch: mamba-ssm's setup.py hard-codes nine -gencode targets (sm_75 ... sm_121) and
# ignores TORCH_CUDA_ARCH_LIST for them; one target (GENCODE, default sm_90: H100/H200) is a ninth
# of the compile time. The patched copy lives in a temporary directory; the sdist stays as released.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAMBA_SSM=2.3.2.post1
GENCODE=${GENCODE:-arch=compute_90,code=sm_90}
SITE=${SITE:-/tmp/site}
SDIST=.whl/mamba_ssm-$MAMBA_SSM.tar.gz
# the Python that has the CUDA torch: a bare `pip` can be another interpreter's (on the lent H200,
# /usr/local's pip beside /opt/torch/.venv's python3), whose build then finds no torch
PYTHON=${PYTHON:-python3}

wheel=$(ls .whl/mamba_ssm-$MAMBA_SSM-cp*-linux_x86_64.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  [ -f "$SDIST" ] || { echo "missing $SDIST: run experiments/bench/gpu_wheels.sh where PyPI is reachable" >&2; exit 1; }
  command -v nvcc >/dev/null || { echo "nvcc not found: mamba-ssm's CUDA extension needs the CUDA toolkit" >&2; exit 1; }
  "$PYTHON" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null || echo "warning: no ninja: the build runs serially (MAX_JOBS is ignored)" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  tar -xzf "$SDIST" -C "$tmp"
  src=$tmp/mamba_ssm-$MAMBA_SSM
  GENCODE=$GENCODE "$PYTHON" - "$src/setup.py" <<'PY'
import os, sys
path = sys.argv[1]
text = open(path).read()
anchor = "    # HACK: The compiler flag -D_GLIBCXX_USE_CXX11_ABI"
if text.count(anchor) != 1:
    sys.exit(f"{path}: expected one line starting {anchor.strip()!r} after the -gencode list; the setup.py changed")
patch = f'    if not HIP_BUILD:  # patched by fp4train: one GPU architecture\n        cc_flag = ["-gencode", "{os.environ["GENCODE"]}"]\n\n'
open(path, "w").write(text.replace(anchor, patch + anchor))
PY
  arch=${GENCODE##*code=sm_}
  TORCH_CUDA_ARCH_LIST="${arch:0:-1}.${arch: -1}" MAMBA_FORCE_BUILD=TRUE MAX_JOBS=${MAX_JOBS:-16} \
    "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w .whl "$src"
  wheel=$(ls .whl/mamba_ssm-$MAMBA_SSM-cp*-linux_x86_64.whl | head -n1)
fi
others=$(ls .whl/*-py3-none-any.whl)  # einops, and Hydra's three when gpu_wheels.sh fetched them
echo "installing $wheel and" $others "into $SITE"
"$PYTHON" -m pip install --no-deps --no-index --no-compile --upgrade --target "$SITE" "$wheel" $others
PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -c "
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__, 'imports from', mamba_ssm.__file__)"
