#!/bin/bash
# Vagrant provisioning of the director VM (run as root by `vagrant up`/`vagrant provision`).
# Usage: provision-director.sh DIRECTOR_ADDRESS
#
# The repository is rsynced to /vagrant. This runs the project's own setup (apt packages,
# kernel header links for bcc, bpffs, the venv in /vagrant/.venv), then installs and
# starts the unit `dr-lb systemd-unit --install` writes (dr-lb.service, Type=notify),
# which runs /vagrant/.venv/bin/dr-lb up --replace /vagrant/vagrant/director.toml
set -euo pipefail

DIP=${1:?usage: provision-director.sh DIRECTOR_ADDRESS}
REPO=/vagrant
CONFIG=$REPO/vagrant/director.toml
DRLB=$REPO/.venv/bin/dr-lb

"$REPO/scripts/setup.sh"
# The kernel's own IPVS, for the side-by-side run in vagrant/bench.sh.
command -v ipvsadm >/dev/null 2>&1 ||
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends ipvsadm

# The private-network NIC is the one holding the director's address (eth0 is Vagrant's
# NAT/management NIC). director.toml says eth1; if this box names it otherwise, run with a
# copy that names the right one.
nic=$(ip -o -4 addr show to "$DIP/32" | awk '{ print $2; exit }')
if [ -z "$nic" ]; then
    echo "provision-director: no interface has $DIP; is the private network up? (ip -br -4 addr)" >&2
    exit 1
fi
configured=$(sed -n 's/^interface *= *"\([^"]*\)".*/\1/p' "$CONFIG")
if [ "$nic" != "$configured" ]; then
    mkdir -p /etc/dr-lb
    sed "s/^interface *= *\"[^\"]*\"/interface = \"$nic\"/" "$CONFIG" > /etc/dr-lb/director.toml
    echo "provision-director: $DIP is on $nic, not $configured as $CONFIG says;" \
         "dr-lb.service uses /etc/dr-lb/director.toml (a copy naming $nic)"
    CONFIG=/etc/dr-lb/director.toml
else
    rm -f /etc/dr-lb/director.toml
fi
"$DRLB" check "$CONFIG"

# The unit `dr-lb systemd-unit` writes (Type=notify, hardening, the capabilities it needs);
# --install writes /etc/systemd/system/dr-lb.service and enables it.
"$DRLB" systemd-unit --config "$CONFIG" --install
systemctl restart dr-lb.service

# systemctl restart returns once the unit said READY=1 (attached and programmed).
for _ in $(seq 120); do
    if "$DRLB" status --interface "$nic" >/dev/null 2>&1; then
        journalctl -u dr-lb.service -b --no-pager -o cat | grep 'dr-lb: ready' | tail -n 1 || true
        "$DRLB" status --interface "$nic"
        exit 0
    fi
    sleep 1
done
echo "provision-director: dr-lb did not come up within 120 s; its log:" >&2
journalctl -u dr-lb.service -b --no-pager -n 40 >&2
exit 1
