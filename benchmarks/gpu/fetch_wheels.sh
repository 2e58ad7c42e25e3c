#!/usr/bin/env bash
# Downloads, on a machine with the package registry, the wheels that benchmarks/gpu/run.sh installs on the GPU
# machine (which has no registry): flash-linear-attention and what the benchmark, its plot and the tests import
# beyond the device image's torch, triton, timm, lightning and torchmetrics. Pinned by constraints.txt; for the
# image's Python (3.12 by default: PYTHON_VERSION=3.11 ... to change it). Into benchmarks/gpu/wheels (ignored by
# git; pass it to the device tool in `carry`).
set -euo pipefail
cd "$(dirname "$0")/../.."
python_version=${PYTHON_VERSION:-3.12}
packages=(
  fla-core einops                                 # the chunkwise kernels
  rich markdown-it-py mdurl pygments              # the benchmark's progress bar
  matplotlib contourpy cycler fonttools kiwisolver pyparsing python-dateutil six  # its plot
  pytest iniconfig pluggy packaging               # the GPU tests
)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$python_version" \
  --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 \
  --implementation cp -c constraints.txt -d benchmarks/gpu/wheels "${packages[@]}"
ls benchmarks/gpu/wheels
du -sh benchmarks/gpu/wheels
