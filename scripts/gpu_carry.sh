#!/usr/bin/env bash
# Prepare, on the development machine, what a GPU check carries to the device machine
# (which has torch, lightning, torchmetrics, scikit-learn and tensorboard, but neither the
# internet nor hydra-core/omegaconf, nor ../shared/data). Writes the git-ignored folder .gpu/:
#   .gpu/wheels/  hydra-core, omegaconf, antlr4-python3-runtime, hydra-joblib-launcher and joblib wheels (the versions of .venv)
#   .gpu/optional/ matplotlib and its pure dependencies for Python 3.12 (numpy and pillow excluded: the image
#                 has them), installed there only if the image lacks matplotlib (TensorBoard's figures need it)
#   .gpu/data/    the data mirror's MNIST .gz files and CIFAR-10 JPEG archive (about 45 MB in all)
# Then, on the device machine: bash scripts/gpu_checks.sh (see docs/benchmarks.md).
set -euo pipefail
cd "$(dirname "$0")/.."
mirror=${VAELAB_DATA_MIRROR:-../shared/data}
python=${PYTHON:-.venv/bin/python}
for f in MNIST/raw/train-images-idx3-ubyte.gz CIFAR10-JPEG/cifar10-jpeg.tar.gz; do
  [[ -f $mirror/$f ]] || { echo "gpu_carry: $mirror/$f not found: set VAELAB_DATA_MIRROR to the data mirror" >&2; exit 2; }
done
version() { "$python" -m pip show "$1" | sed -n 's/^Version: //p'; }
rm -rf .gpu.tmp && mkdir -p .gpu.tmp/wheels .gpu.tmp/optional .gpu.tmp/data/MNIST/raw .gpu.tmp/data/CIFAR10-JPEG
"$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation py \
  --platform any -d .gpu.tmp/wheels "hydra-core==$(version hydra-core)" "omegaconf==$(version omegaconf)" \
  "hydra-joblib-launcher==$(version hydra-joblib-launcher)" "joblib==$(version joblib)"
"$python" -m pip wheel -q --no-deps -w .gpu.tmp/wheels "antlr4-python3-runtime==$(version antlr4-python3-runtime)"
"$python" -m pip download -q --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d .gpu.tmp/optional \
  "matplotlib==$(version matplotlib)"
rm -f .gpu.tmp/optional/numpy-* .gpu.tmp/optional/pillow-*
cp "$mirror"/MNIST/raw/*.gz .gpu.tmp/data/MNIST/raw/
cp "$mirror"/CIFAR10-JPEG/cifar10-jpeg.tar.gz .gpu.tmp/data/CIFAR10-JPEG/
rm -rf .gpu && mv .gpu.tmp .gpu
du -sh .gpu && ls .gpu/wheels
