#!/bin/sh
# The throughput benchmark on a CUDA machine, then the interpreter's CPU per file with the model on
# the GPU (issue 37's measure where it is meant), in one command, a few minutes:
#   sh bench/gpu.sh            (results: $OUT or bench/results, throughput-gpu.json, cpu-per-file-gpu.json)
# Wheels in .whl/ (for packages the machine lacks: pydantic, structlog, watchdog...) are
# installed to /tmp/site first; see bench/README.md.
set -eu
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
# daemon/ is the source root of the clipsort package; the repository root holds bench.
export PYTHONPATH="$PWD/daemon:$PWD:${PYTHONPATH:-}" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
OUT="${OUT:-bench/results}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name())"
# The JPEG decoder on the GPU beside the CPU path, where torchvision loads (the gpu-decode extra).
if python3 -c "import torchvision.io" 2>/dev/null; then JPEG_DECODERS=pillow,torchvision; else JPEG_DECODERS=pillow; fi
echo "jpeg decoders: $JPEG_DECODERS"
python3 -m bench.throughput --device cuda --jpeg-decoders "$JPEG_DECODERS" --batch-size 256 --decode-workers 16 \
    --counts "${COUNTS:-64,256,8192}" --rounds "${ROUNDS:-2}" --model-only 8192 --singles 20 --rss 1000,10000 \
    --out "$OUT/throughput-gpu.json"
python3 -m bench.cpu_per_file --device cuda --out "$OUT/cpu-per-file-gpu.json"
