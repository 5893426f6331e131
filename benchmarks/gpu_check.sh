#!/usr/bin/env bash
# Every GPU measurement of the project in one run, sized for a short GPU loan (under 8 minutes on
# one H100/H200, so a loan covers a run and a rerun):
#   1. the CFT step against a plain step (benchmarks/relevance_step.py): world ViT at batch 64 and
#      512, ViT-B/16 at 8 and 64; plain, the published code's rollout step, our exact AttnLRP step,
#      with the profile of each (where the GPU time goes);
#   2. `cft evaluate` end to end, ViT-B/16 in bf16, JPEG decoding included (target >= 2,000 img/s);
#   3. the grounded_sam mask backend with full-size GroundingDINO Swin-T and SAM ViT-H (target >= 5 img/s).
#
#   benchmarks/gpu_check.sh wheels   # here, where PyPI is reachable: the packages the GPU image lacks, into .whl/
#   benchmarks/gpu_check.sh          # on the GPU machine (with .whl/ beside it): writes gpu_check.log, also under $OUT
#
# The GPU image has torch, timm, numpy, pyarrow, typer and tqdm but not pydantic, zarr, segment-anything,
# groundingdino-py or transformers < 5; `wheels` fetches those for CPython 3.12 on x86-64 (about 30 MB).
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(
    pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
    zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
    segment-anything==1.0 transformers==4.57.6 tokenizers==0.22.2 huggingface_hub==0.36.2
    addict==2.4.0 yapf==0.43.0 supervision==0.6.0 pycocotools==2.0.11
)

if [[ "${1:-}" == "wheels" ]]; then
    mkdir -p .whl
    platforms=()
    for tag in manylinux_2_34 manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
        platforms+=(--platform "${tag}_x86_64")
    done
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        "${platforms[@]}" -d .whl "${PACKAGES[@]}"
    python3 -m pip wheel --quiet --no-deps -w .whl groundingdino-py==0.4.0  # an sdist of pure Python
    grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    du -sh .whl
    exit 0
fi

if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONUNBUFFERED=1
log="${OUT:-.}/gpu_check.log"

# Each measurement has its own time limit (together 7.5 minutes); one that fails or runs out says so
# and the next still runs.
measure() {
    local limit="$1"
    shift
    timeout "$limit" "$@" || echo "!! exit $? (limit ${limit} s): $*"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    python3 -c "import torch, timm; print('torch', torch.__version__, 'timm', timm.__version__, torch.cuda.get_device_name())"
    echo "== 1. CFT step against a plain step"
    measure 100 python3 benchmarks/relevance_step.py --device cuda --models world --batches 64 512 --profile
    measure 150 python3 benchmarks/relevance_step.py --device cuda --models vit_base_patch16_224 --batches 8 64 --profile
    echo "== 2. cft evaluate end to end, ViT-B/16 bf16"
    measure 120 python3 benchmarks/evaluate_throughput.py --device cuda --batch-size 256 --images 10000 \
        --workers "$(nproc)" --model vit_base_patch16_224
    echo "== 3. grounded_sam masks, full-size models"
    measure 80 python3 benchmarks/grounded_sam.py --models full --device cuda --images 32 --images-per-batch 8
} 2>&1 | tee "$log"
