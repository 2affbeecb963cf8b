#!/usr/bin/env bash
# Run ON the GPU machine (nvcc, a CUDA torch, no package index): build mamba-ssm's wheel, and
# causal-conv1d's when its source package is there, for sm_90 only from the source packages that
# experiments/bench/gpu_wheels.sh put in .whl/, and install them with einops (and Hydra's wheels)
# into /tmp/site (then: PYTHONPATH=/tmp/site python ...). Idempotent: a wheel already built in .whl/
# is installed without building again. On the lent H200 (16 cores, nvcc 13.0, torch 2.11+cu130),
# built one after the other, mamba-ssm took ~2.5 min and causal-conv1d ~7 min; they now build side
# by side. The wheels (~40 and ~26 MB) can be carried to later calls in .whl/ (gpu_call_lib.sh's
# return_wheels).
#
# Why the patch: both setup.py files hard-code their -gencode targets (mamba-ssm nine, sm_75 ...
# sm_121; causal-conv1d eight) and ignore TORCH_CUDA_ARCH_LIST for them; one target (GENCODE,
# default sm_90: H100/H200) is a fraction of the compile time. The patched copy lives in a temporary
# directory; the source packages stay as released.
set -euo pipefail
cd "$(dirname "$0")/../.."
MAMBA_SSM=2.3.2.post1
CAUSAL_CONV1D=1.7.0
GENCODE=${GENCODE:-arch=compute_90,code=sm_90}
SITE=${SITE:-/tmp/site}
# the Python that has the CUDA torch: a bare `pip` can be another interpreter's (on the lent H200,
# /usr/local's pip beside /opt/torch/.venv's python3), whose build then finds no torch
PYTHON=${PYTHON:-python3}

# built_wheel DIST VERSION: the path of .whl/DIST-VERSION-cp*.whl, empty when there is none
built_wheel() { ls .whl/$1-$2-cp*-linux_x86_64.whl 2>/dev/null | head -n1 || true; }

# build_wheel DIST VERSION FORCE_BUILD_VARIABLE: .whl/DIST-VERSION-cp*.whl, built from .whl/DIST-VERSION.tar.gz
# unless it is there (then nothing to do)
build_wheel() {
  local dist=$1 version=$2 force=$3 tmp src arch
  if [ -z "$(built_wheel "$dist" "$version")" ]; then
    command -v nvcc >/dev/null || { echo "nvcc not found: $dist's CUDA extension needs the CUDA toolkit" >&2; exit 1; }
    "$PYTHON" -c "import ninja" 2>/dev/null || command -v ninja >/dev/null || echo "warning: no ninja: the build runs serially (MAX_JOBS is ignored)" >&2
    tmp=$(mktemp -d)
    tar -xzf ".whl/$dist-$version.tar.gz" -C "$tmp" || return 1
    src=$tmp/$dist-$version
    GENCODE=$GENCODE "$PYTHON" - "$src/setup.py" <<'PY' || return 1
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
    env "$force=TRUE" TORCH_CUDA_ARCH_LIST="${arch:0:-1}.${arch: -1}" MAX_JOBS=${MAX_JOBS:-16} \
      "$PYTHON" -m pip wheel --no-deps --no-build-isolation -w .whl "$src" || { rm -rf "$tmp"; return 1; }
    rm -rf "$tmp"
  fi
}

[ -f ".whl/mamba_ssm-$MAMBA_SSM.tar.gz" ] || [ -n "$(built_wheel mamba_ssm "$MAMBA_SSM")" ] \
  || { echo "missing .whl/mamba_ssm-$MAMBA_SSM.tar.gz: run experiments/bench/gpu_wheels.sh where PyPI is reachable" >&2; exit 1; }
# causal-conv1d builds beside mamba-ssm: it is three .cu files, so at most three nvcc processes, and
# leaves most of the cores to mamba-ssm's build
CONV_BUILD=
if [ -f ".whl/causal_conv1d-$CAUSAL_CONV1D.tar.gz" ] || [ -n "$(built_wheel causal_conv1d "$CAUSAL_CONV1D")" ]; then
  build_wheel causal_conv1d "$CAUSAL_CONV1D" CAUSAL_CONV1D_FORCE_BUILD &
  CONV_BUILD=$!
else
  echo "no .whl/causal_conv1d-$CAUSAL_CONV1D.tar.gz: the mixer's conv stays F.conv1d (gpu_wheels.sh fetches it)" >&2
fi
build_wheel mamba_ssm "$MAMBA_SSM" MAMBA_FORCE_BUILD
WHEELS=("$(built_wheel mamba_ssm "$MAMBA_SSM")")
[ -n "${WHEELS[0]}" ] || { echo "no mamba_ssm wheel in .whl/ after its build (above)" >&2; exit 1; }
if [ -n "$CONV_BUILD" ]; then
  wait "$CONV_BUILD" || true
  conv_wheel=$(built_wheel causal_conv1d "$CAUSAL_CONV1D")
  if [ -n "$conv_wheel" ]; then
    WHEELS+=("$conv_wheel")
  else
    echo "causal-conv1d did not build (above): the mixer's conv stays F.conv1d" >&2
  fi
fi
others=$(ls .whl/*-py3-none-any.whl)  # einops, and Hydra's three when gpu_wheels.sh fetched them
echo "installing ${WHEELS[*]} and" $others "into $SITE"
"$PYTHON" -m pip install --no-deps --no-index --no-compile --upgrade --target "$SITE" "${WHEELS[@]}" $others
PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH} "$PYTHON" -c "
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined
from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
import mamba_ssm; print('mamba_ssm', mamba_ssm.__version__, 'imports from', mamba_ssm.__file__)
try:
    import causal_conv1d; print('causal_conv1d', causal_conv1d.__version__, 'imports from', causal_conv1d.__file__)
except ImportError as e:
    print('causal_conv1d does not import:', e)"
