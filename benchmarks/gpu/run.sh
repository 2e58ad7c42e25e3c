#!/usr/bin/env bash
# The GPU check, in one call of the device tool (no registry there; the wheels come in the working tree):
#   here:   benchmarks/gpu/fetch_wheels.sh
#   device: run(command="bash benchmarks/gpu/run.sh", carry=["benchmarks/gpu/wheels"], timeout_s=600)
# Installs flash-linear-attention and the benchmark's imports from benchmarks/gpu/wheels, then, writing under
# $OUT: the GPU-only tests (gpu_tests.txt), and the benchmark of ViR-B/ViT-B and ViR-T/ViT-T at 224, 512, 1024
# and 2048 px in bf16 with fla's kernels and flash-pinned ViT (base/, tiny/: results.{json,csv,md,png}), each
# with environment.txt (device, versions, commands). Runs from the source checkout: nothing else is installed.
# Every step runs even if one before failed; the exit status says whether any did.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:?set OUT to the folder for the results}
mkdir -p "$OUT"
export NO_ALBUMENTATIONS_UPDATE=1 PYTHONDONTWRITEBYTECODE=1
failed=()
step() {  # step NAME TIMEOUT COMMAND...: run, log to $OUT/NAME.txt, remember a failure
  local name=$1 limit=$2; shift 2
  echo "+ $*" | tee "$OUT/$name.txt"
  timeout "$limit" "$@" 2>&1 | tee -a "$OUT/$name.txt"
  local status=${PIPESTATUS[0]}
  [ "$status" -eq 0 ] || { failed+=("$name (exit $status)"); echo "step $name failed: exit $status"; }
}

wheels=benchmarks/gpu/wheels
step install 120 python -m pip install --no-index --no-deps --find-links "$wheels" --quiet \
  fla-core einops rich markdown-it-py mdurl pygments matplotlib contourpy cycler fonttools kiwisolver pyparsing \
  python-dateutil six pytest iniconfig pluggy packaging
step environment 60 python -c "
import platform, torch, timm, lightning
from vir_lightning.models.retention_fla import fla_available
print('python', platform.python_version(), '| torch', torch.__version__, '| cuda', torch.version.cuda,
      '| timm', timm.__version__, '| lightning', lightning.__version__)
try:
    import triton, fla
    print('triton', triton.__version__, '| fla', getattr(fla, '__version__', '?'))
except ImportError as error:
    print('missing:', error)
print('device:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA device')
print('fla kernels usable:', fla_available())"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
step gpu_tests 240 python -m pytest -q -p no:cacheprovider tests/test_retention.py tests/test_qna.py -k "fla or cuda" -rs
bench=(python -m vir_lightning benchmark --device cuda --dtype bfloat16 --kernel fla --sdpa FLASH_ATTENTION
       --sizes 224 512 1024 2048 --modes auto chunkwise --warmup 3 --repeats 10)
step base 300 "${bench[@]}" --backbones vir_base_patch16_224 vit_base_patch16_224 --output "$OUT/base"
step tiny 180 "${bench[@]}" --backbones vir_tiny_patch16_224 vit_tiny_patch16_224 --output "$OUT/tiny"

if [ ${#failed[@]} -gt 0 ]; then
  printf 'failed: %s\n' "${failed[@]}" | tee "$OUT/failed.txt"
  exit 1
fi
echo "all steps passed; results in $OUT"
