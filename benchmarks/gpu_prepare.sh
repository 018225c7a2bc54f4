#!/usr/bin/env bash
# Before a lent GPU machine's call, on this (CPU) machine: what benchmarks/gpu_check.sh needs to carry there, both
# git-ignored through .git/info/exclude. Then: device run with carry [".whl", ".devcarry"] (see gpu_check.sh).
#
#   .whl/        wheels for the GPU image's Python 3.12 of what its image lacks, at the versions installed here
#   .devcarry/sw_checkpoint.pt
#                trained weights of the flagship for the sliding-window trials (80 CPU epochs on the built-in sample
#                at roi 64^3, about 17 minutes on 2 cores; validation Dice about 0.85); kept when it exists
#
#   bash benchmarks/gpu_prepare.sh            # run from the repository, with its environment active
#   EPOCHS=1 bash benchmarks/gpu_prepare.sh   # a quick checkpoint (timings alike, label maps less telling)
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .git/info
for p in /.whl/ /.devcarry/; do
    grep -qxF "$p" .git/info/exclude 2>/dev/null || echo "$p" >> .git/info/exclude
done

mkdir -p .whl
for name in monai nibabel pytorch-ignite pydicom highdicom pyjpegls fire termcolor; do
    version=$(python -m pip show "$name" 2>/dev/null | awk '/^Version:/{print $2}')
    [ -n "$version" ] || { echo "$name is not installed here: install the project with .[test] first" >&2; exit 1; }
    python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl "$name==$version"
done
ls .whl

if [ ! -f .devcarry/sw_checkpoint.pt ]; then
    work=$(mktemp -d)
    cp -r bundles/attunet_pancreas "$work/bundle"
    rm -f "$work"/bundle/models/*.pt
    python -c "from monai_unet_variants.data import ensure_sample_data; ensure_sample_data('$work/sample')"
    python -m monai.bundle run --config_file "$work/bundle/configs/train.json" --dataset_dir "$work/sample" \
        --roi_size "[64,64,64]" --epochs "${EPOCHS:-80}" --val_interval 20 > "$work/train.log" 2>&1 \
        || { tail -20 "$work/train.log" >&2; exit 1; }
    mkdir -p .devcarry
    cp "$work/bundle/models/model.pt" .devcarry/sw_checkpoint.pt
    cat "$work/bundle/models/best_metric.json"
    rm -rf "$work"
fi
du -sh .whl .devcarry
