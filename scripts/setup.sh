#!/usr/bin/env bash
# Idempotent setup for a fresh Debian 12 machine (run as root): apt packages, the kernel
# header links bcc needs (see KERNEL-NOTES), bpffs, and a venv in .venv that sees
# Debian's bcc bindings. Never `pip install bcc`: on PyPI that name is unrelated.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ "$(id -u)" -ne 0 ]; then
    echo "setup.sh: run as root (sudo $0)" >&2
    exit 1
fi

APT_PACKAGES=(
    python3 python3-venv python3-pip python3-bpfcc bpfcc-tools clang llvm libbpf-dev
    linux-headers-amd64 iproute2 ethtool tcpdump iputils-ping arping curl bpftool
    python3-pyroute2 python3-click python3-cffi python3-tomlkit python3-numpy python3-scapy python3-pytest python3-pytest-cov python3-matplotlib
    python3-prometheus-client systemd shellcheck bird2 keepalived vagrant
    vagrant-libvirt
)
missing=()
for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

# bcc needs /lib/modules/$(uname -r)/{build,source}; Debian splits headers in two dirs.
kver=$(uname -r)
if [ ! -e "/lib/modules/$kver/build/include" ]; then
    arch_dir=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
    common_dir=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$arch_dir" ] || [ -z "$common_dir" ]; then
        echo "setup: linux-headers-amd64 did not install headers under /usr/src" >&2
        exit 1
    fi
    mkdir -p "/lib/modules/$kver"
    ln -sfn "$arch_dir" "/lib/modules/$kver/build"
    ln -sfn "$common_dir" "/lib/modules/$kver/source"
    echo "setup: linked /lib/modules/$kver/build -> $arch_dir"
fi

mountpoint -q /sys/fs/bpf || mount -t bpf bpf /sys/fs/bpf

if [ ! -x .venv/bin/python ]; then
    /usr/bin/python3 -m venv --system-site-packages .venv
fi
if ! .venv/bin/python -c 'import lb, pytest, scapy, matplotlib' 2>/dev/null || [ pyproject.toml -nt .venv/.installed ]; then
    .venv/bin/pip install -q --disable-pip-version-check -e '.[test,bench]'
    touch .venv/.installed
fi
