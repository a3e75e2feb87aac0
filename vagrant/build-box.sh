#!/bin/bash
# Build a Vagrant box for the libvirt provider from Debian 12's own packages (mmdebstrap),
# for hosts that cannot download boxes from the public catalogue. Run as root:
#
#   vagrant/build-box.sh                 # adds the box dr-lb/debian12-local
#   cd vagrant && DR_LB_BOX=dr-lb/debian12-local vagrant up --provider=libvirt
#
# The box holds every package the scene's provisioning installs (scripts/setup.sh's list
# and the provision-*.sh scripts'), so `vagrant up` installs nothing from apt; the
# director's provisioning still fetches the venv's Python packages that Debian lacks, so
# the box also trusts the host's own local CAs (/usr/local/share/ca-certificates: a
# TLS-intercepting proxy's, say), and the VMs reach what the host reaches.
# It boots Debian's kernel directly (libvirt's kernel/initrd, no bootloader), with eth0/eth1
# names as the debian/bookworm64 box has. DR_LB_LIBVIRT_DRIVER=qemu runs it under TCG where
# KVM cannot boot a guest (KERNEL-NOTES: functional only, far too slow to measure).
#
# Environment: BOX_NAME (dr-lb/debian12-local), BOX_SIZE (8G), MIRROR
# (http://deb.debian.org/debian), WORK (/var/tmp/dr-lb-box: the image and the box file).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(dirname "$HERE")
NAME=${BOX_NAME:-dr-lb/debian12-local}
SIZE=${BOX_SIZE:-8G}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
WORK=${WORK:-/var/tmp/dr-lb-box}

if [ "$(id -u)" -ne 0 ]; then
    echo "build-box.sh: run as root (sudo $0)" >&2
    exit 1
fi
for tool in mmdebstrap mke2fs qemu-img vagrant; do
    command -v "$tool" >/dev/null 2>&1 || {
        echo "build-box.sh: $tool is missing: apt-get install mmdebstrap e2fsprogs qemu-utils vagrant" >&2
        exit 1
    }
done
key=$(find /usr/share/rubygems-integration/all/gems -path '*/vagrant-*/keys/vagrant.pub' \
      2>/dev/null | sort -V | tail -n 1 || true)
[ -n "$key" ] || key=$(gem contents vagrant 2>/dev/null | grep '/keys/vagrant.pub$' | head -n 1 || true)
if [ -z "$key" ]; then
    echo "build-box.sh: cannot find Vagrant's insecure public key (keys/vagrant.pub)" >&2
    exit 1
fi

# One list: the packages setup.sh installs, and those of the three provision scripts.
mapfile -t setup_pkgs < <(sed -n '/^APT_PACKAGES=(/,/^)/p' "$REPO/scripts/setup.sh" |
                          sed '1d;$d' | tr -s ' \t' '\n' | sed '/^$/d')
pkgs=("${setup_pkgs[@]}" ipvsadm nginx iperf3 curl wrk
      linux-image-amd64 systemd-sysv openssh-server sudo ifupdown isc-dhcp-client rsync
      ca-certificates)
include=$(IFS=,; echo "${pkgs[*]}")

rm -rf "$WORK"
mkdir -p "$WORK/rootfs" "$WORK/box"
root=$WORK/rootfs
echo "build-box: debootstrapping Debian 12 with ${#pkgs[@]} packages into $root"
mmdebstrap --mode=root --variant=important --include="$include" --components=main \
    bookworm "$root" "$MIRROR" "${MIRROR%/debian}/debian-security bookworm-security main" \
    "$MIRROR bookworm-updates main"

# What Vagrant expects of a box: the user vagrant, with sudo and Vagrant's insecure key
# (replaced by a key of its own at the first `vagrant up`), and the management NIC by DHCP.
chroot "$root" useradd -m -s /bin/bash -G sudo vagrant
echo "vagrant ALL=(ALL) NOPASSWD: ALL" > "$root/etc/sudoers.d/vagrant"
chmod 0440 "$root/etc/sudoers.d/vagrant"
install -d -m 0700 "$root/home/vagrant/.ssh"
install -m 0600 "$key" "$root/home/vagrant/.ssh/authorized_keys"
chroot "$root" chown -R vagrant:vagrant /home/vagrant/.ssh
echo "UseDNS no" > "$root/etc/ssh/sshd_config.d/vagrant.conf"
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' \
    > "$root/etc/network/interfaces"
echo "/dev/vda / ext4 defaults 0 1" > "$root/etc/fstab"
echo debian12 > "$root/etc/hostname"
# The host's own local CAs, so that the VMs reach what the host reaches.
cp /usr/local/share/ca-certificates/*.crt "$root/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$root" update-ca-certificates >/dev/null

cp -L "$root/vmlinuz" "$WORK/box/vmlinuz"
cp -L "$root/initrd.img" "$WORK/box/initrd.img"
echo "build-box: making the disk image ($SIZE, ext4 on the whole disk)"
mke2fs -q -t ext4 -L root -d "$root" "$WORK/disk.raw" "$SIZE"
qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/box/box.img"
rm -f "$WORK/disk.raw"
bytes=$(qemu-img info --output=json "$WORK/box/box.img" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
echo "{\"provider\": \"libvirt\", \"format\": \"qcow2\", \"virtual_size\": $(( (bytes + (1 << 30) - 1) >> 30 ))}" \
    > "$WORK/box/metadata.json"
cat > "$WORK/box/Vagrantfile" <<'EOF'
# The box's own settings (dr-lb/vagrant/build-box.sh): Debian's kernel booted directly.
BOX_DIR = File.expand_path(__dir__)
Vagrant.configure("2") do |config|
  config.vm.provider :libvirt do |lv|
    lv.driver = ENV.fetch("DR_LB_LIBVIRT_DRIVER", "kvm")
    lv.kernel = File.join(BOX_DIR, "vmlinuz")
    lv.initrd = File.join(BOX_DIR, "initrd.img")
    lv.cmd_line = "root=/dev/vda rw console=ttyS0 net.ifnames=0 biosdevname=0"
  end
end
EOF
tar -C "$WORK/box" -czf "$WORK/dr-lb-debian12.box" metadata.json Vagrantfile box.img vmlinuz initrd.img
rm -rf "$root"
vagrant box add --force --name "$NAME" "$WORK/dr-lb-debian12.box"
echo "build-box: added $NAME; cd vagrant && DR_LB_BOX=$NAME vagrant up --provider=libvirt"
