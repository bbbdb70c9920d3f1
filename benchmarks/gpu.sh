#!/usr/bin/env bash
# The train_step table on one NVIDIA GPU: ResNet-18 and ResNet-50 at 224 px, bf16 autocast,
# channels_last, every rule against bp. For a machine with a CUDA PyTorch and no network: the
# project is installed from this checkout without dependencies (torch must be there; the other
# dependencies pip reports missing are needed: pluggy, omegaconf, pyyaml, numpy, tqdm...).
# Under 5 minutes on a recent GPU (8 Trainers per network, 3 warm-up + 10 timed steps each).
#
#   benchmarks/gpu.sh [PYTHON]        (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${1:-python3}
"$PYTHON" -c 'import torch; assert torch.cuda.is_available(), "no CUDA GPU visible to torch"; print(torch.cuda.get_device_name(0))'
"$PYTHON" -m pip install --quiet --no-deps --no-build-isolation -e . >/dev/null
BATCH=${BATCH:-64}
exec "$PYTHON" benchmarks/train_step.py --backend cuda --archs resnet18,resnet50 --image-size 224 \
    --resnet-batch "$BATCH" --autocast bfloat16 --channels-last --reps 10 --warmup 3
