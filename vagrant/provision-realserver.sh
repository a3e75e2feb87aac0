#!/bin/sh
# Vagrant provisioning of a real server VM (run as root by `vagrant up`/`vagrant provision`).
# Usage: provision-realserver.sh NAME PORT
#
# No Python and no dr-lb here, as on many real servers (issue 3). The preparation is the
# POSIX sh script that `dr-lb realserver script VIP --port PORT --director DIP` prints,
# committed as vagrant/dr-lb-realserver.sh and uploaded to /tmp by the Vagrantfile:
#   - dr-lb-realserver.service (committed; the unit `realserver up --persist` writes) runs
#     its `up` at every boot, before the network comes up
#     (VIP on lo as a /32, arp_ignore=1 and arp_announce=2 for all, default and lo);
#   - nginx answers every GET on PORT with NAME, as the namespace lab's servers do;
#   - its `check` (the doctor) must then pass, or provisioning fails with the findings.
set -eu

NAME=${1:?usage: provision-realserver.sh NAME PORT}
PORT=${2:?usage: provision-realserver.sh NAME PORT}
# Where `dr-lb realserver up --persist` puts them, so the unit is the same file.
SCRIPT=/etc/dr-lb/realserver.sh

install -D -m 0755 /tmp/dr-lb-realserver.sh "$SCRIPT"
install -m 0644 /tmp/dr-lb-realserver.service /etc/systemd/system/dr-lb-realserver.service
rm -f /tmp/dr-lb-realserver.sh /tmp/dr-lb-realserver.service
systemctl daemon-reload
systemctl enable dr-lb-realserver.service
systemctl restart dr-lb-realserver.service

if ! command -v nginx >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends nginx
fi
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

# The doctor: VIP /32 on lo only, effective ARP sysctls on every interface, something
# listening on PORT for the VIP, default route not through the director.
sh "$SCRIPT" check --port "$PORT"
