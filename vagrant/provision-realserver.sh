#!/bin/sh
# Vagrant provisioning of a real server VM (run as root by `vagrant up`/`vagrant provision`).
# Usage: provision-realserver.sh NAME VIP PORT DIRECTOR
#
# No Python and no dr-lb here, as on many real servers (issue 3). The Vagrantfile syncs
# the repository to /dr-lb; the preparation is its lb/realserver/realserver.sh, the very
# file `dr-lb realserver ...` runs, run with /bin/sh:
#   - its `up --persist VIP` puts the VIP on lo as a /32 and sets arp_ignore=1 and
#     arp_announce=2 for all, default and lo, and makes that survive a reboot: it writes
#     /etc/sysctl.d/90-dr-lb-realserver.conf, a copy of itself with the VIP as
#     /etc/dr-lb/realserver.sh, and dr-lb-realserver.service, which runs that copy's `up`
#     at every boot before the network comes up, and enables the unit;
#   - nginx answers every GET on PORT with NAME, as the namespace lab's servers do;
#   - the copy's `check` must then pass, or provisioning fails with the findings.
set -eu

USAGE="usage: provision-realserver.sh NAME VIP PORT DIRECTOR"
NAME=${1:?$USAGE}
VIP=${2:?$USAGE}
PORT=${3:?$USAGE}
DIRECTOR=${4:?$USAGE}

/bin/sh /dr-lb/lb/realserver/realserver.sh up --persist "$VIP"
# Active now, as after a boot (its `up` finds nothing left to do).
systemctl start dr-lb-realserver.service

if ! command -v nginx >/dev/null 2>&1 || ! command -v iperf3 >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx iperf3
fi
# iperf3's server for vagrant/bench.sh's UDP load, bound to the VIP: a UDP server on the
# wildcard answers from the address its route picks (this host's own), and the client,
# which sent to the VIP, drops that answer ("unable to read from stream socket"; found
# running the scene). After dr-lb-realserver.service, which puts the VIP on lo at boot.
# (An earlier provisioning ran it as a transient unit of the same name: stopped first.)
systemctl stop dr-lb-iperf3.service 2>/dev/null || true
rm -f /run/systemd/transient/dr-lb-iperf3.service
cat > /etc/systemd/system/dr-lb-iperf3.service <<IPERF_EOF
# Installed by vagrant/provision-realserver.sh
[Unit]
Description=iperf3 server on the VIP $VIP for vagrant/bench.sh
After=network.target dr-lb-realserver.service

[Service]
ExecStart=/usr/bin/iperf3 -s -B $VIP
Restart=on-failure

[Install]
WantedBy=multi-user.target
IPERF_EOF
systemctl daemon-reload
systemctl enable dr-lb-iperf3.service
systemctl restart dr-lb-iperf3.service
cat > /etc/nginx/sites-available/dr-lb <<NGINX_EOF
# Installed by vagrant/provision-realserver.sh: every GET answers with this host's name.
# Listens on the wildcard address, so it also accepts connections to the VIP on lo.
server {
    listen $PORT default_server;
    server_name _;
    default_type text/plain;
    location / {
        return 200 "$NAME\n";
    }
}
NGINX_EOF
rm -f /etc/nginx/sites-enabled/default
ln -sfn ../sites-available/dr-lb /etc/nginx/sites-enabled/dr-lb
nginx -t -q
systemctl enable nginx.service
systemctl reload-or-restart nginx.service

# The check: VIP /32 on lo only, effective ARP sysctls on every interface, something
# listening on PORT for the VIP, default route not through the director.
sh /etc/dr-lb/realserver.sh check --port "$PORT" --director "$DIRECTOR"
