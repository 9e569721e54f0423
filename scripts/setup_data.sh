#!/usr/bin/env bash
# First-time data set-up: make Fashion-MNIST available to gpd.
# Usage: scripts/setup_data.sh [PYTHON]   (PYTHON: the venv's python, for the download fallback)
# Tries, in order: the Debian package's files already present; apt-get install (as root);
# torchvision download through gpd into the cache folder ($GPD_DATA or ~/.cache/gpd/data).
set -u

PYTHON="${1:-python3}"
DEB_DIR="${GPD_DEBIAN_FASHION_MNIST_DIR:-/usr/share/datasets/fashion-mnist}"  # override for tests
DEB_FILE="$DEB_DIR/train-images-idx3-ubyte.gz"
PKG=dataset-fashion-mnist

if [ -f "$DEB_FILE" ]; then
    echo "setup_data: Fashion-MNIST already installed in $DEB_DIR; nothing to do"
    exit 0
fi

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" -eq 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    if apt-get install -y "$PKG" >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y "$PKG" >/dev/null 2>&1; }; then
        if [ -f "$DEB_FILE" ]; then
            echo "setup_data: installed Debian package $PKG into $DEB_DIR"
            exit 0
        fi
    fi
fi

if "$PYTHON" -c 'from gpd.data import build_datasets; build_datasets("fashion_mnist", download=True)'; then
    echo "setup_data: Fashion-MNIST available to gpd (found or downloaded by torchvision into \${GPD_DATA:-~/.cache/gpd/data})"
    exit 0
fi

echo "setup_data: ERROR: could not get Fashion-MNIST: $DEB_FILE is absent, apt-get install $PKG failed or was not possible (needs root and apt-get), and the download with $PYTHON failed; install $PKG by hand, or put the four IDX .gz files in ./data or \$GPD_DATA" >&2
exit 1
