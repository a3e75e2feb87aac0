#!/bin/sh
# Vagrant provisioning of the client VM (run as root). Usage: provision-client.sh VIP PORT
set -eu
VIP=${1:?usage: provision-client.sh VIP PORT}
PORT=${2:?usage: provision-client.sh VIP PORT}
# curl for the demo; wrk (HTTP) and iperf3 (UDP) for the load in vagrant/bench.sh.
if ! command -v curl >/dev/null 2>&1 || ! command -v wrk >/dev/null 2>&1 ||
   ! command -v iperf3 >/dev/null 2>&1; then
    apt-get update -q
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        curl wrk iperf3
fi
echo "client ready; try: for i in \$(seq 12); do curl -s http://$VIP:$PORT/; done"
