#!/usr/bin/env bash
# Extract the JPEG CIFAR-10 copy (../shared/data/cifar10-jpeg.tar.gz) into an ImageFolder tree, once.
#   bash scripts/get_cifar10.sh [DEST]   (default data/cifar10; ARCHIVE=path overrides the archive)
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DEST=${1:-$ROOT/data/cifar10}
ARCHIVE=${ARCHIVE:-$ROOT/../shared/data/cifar10-jpeg.tar.gz}
SHA256=6011a6639e2455a8a043c33c8b02dee6f33d8b6ed0db49093b601a4d88cb0f1e

if [ -f "$DEST/.complete" ]; then echo "[cifar10] $DEST ready"; exit 0; fi
[ -f "$ARCHIVE" ] || { echo "[cifar10] error: $ARCHIVE not found (set ARCHIVE=/path/to/cifar10-jpeg.tar.gz)" >&2; exit 1; }
echo "$SHA256  $ARCHIVE" | sha256sum -c --quiet - || { echo "[cifar10] error: $ARCHIVE checksum differs" >&2; exit 1; }
tmp=$(mktemp -d "$(dirname "$DEST")/.cifar10.XXXXXX" 2>/dev/null || { mkdir -p "$(dirname "$DEST")"; mktemp -d "$(dirname "$DEST")/.cifar10.XXXXXX"; })
trap 'rm -rf "$tmp"' EXIT
tar xzf "$ARCHIVE" -C "$tmp"
src=$(dirname "$(find "$tmp" -type d -name train -print -quit)")
[ -d "$src/train" ] && [ -d "$src/test" ] || { echo "[cifar10] error: archive has no train/ and test/ folders" >&2; exit 1; }
n_train=$(find "$src/train" -name '*.jpg' | wc -l); n_test=$(find "$src/test" -name '*.jpg' | wc -l)
[ "$n_train" -eq 50000 ] && [ "$n_test" -eq 10000 ] || { echo "[cifar10] error: expected 50000/10000 images, found $n_train/$n_test" >&2; exit 1; }
rm -rf "$DEST"
mv "$src" "$DEST"
touch "$DEST/.complete"
echo "[cifar10] extracted $n_train train + $n_test test images into $DEST"
