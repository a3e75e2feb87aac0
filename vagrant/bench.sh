#!/bin/bash
# dr-lb and the kernel's IPVS side by side on the Vagrant scene (run on the host, from
# vagrant/, after `vagrant up`). Usage: ./bench.sh [SECONDS]
#
#  1. `dr-lb bench --quick` on the director VM (its vCPUs; no VM network involved).
#  2. End-to-end load from the client VM against the VIP, through dr-lb (dr-lb.service):
#     wrk for HTTP (port 80, the three real servers), iperf3 for UDP (port 5201, rs1).
#  3. The same load through the Debian kernel's IPVS doing DR on the same director:
#     dr-lb.service stopped, the rules that `dr-lb ipvsadm export` prints loaded with
#     `ipvsadm -R`, the VIP on the director's private NIC (IPVS needs it local; the
#     director answers ARP for it as dr-lb did). Afterwards IPVS is cleared and dr-lb
#     started again.
# Writes bench-results/ (the bench JSON and one line per load run) and prints a table.
set -euo pipefail
cd "$(dirname "$0")"
SECONDS_PER_RUN=${1:-20}
scene() { python3 -c "import json,sys; s=json.load(open('scene.json')); print(eval(sys.argv[1]))" "$1"; }
VIP=$(scene 's["vip"]')
DIRECTOR_IP=$(scene '[h["address"] for h in s["hosts"] if h["role"]=="director"][0]')
OUT=bench-results
mkdir -p "$OUT"

on() { local vm=$1; shift; vagrant ssh "$vm" -c "$*" -- -q; }
nic=$(on director "ip -o -4 addr show to $DIRECTOR_IP/32 | awk '{print \$2; exit}'" | tr -d '\r')
config=/vagrant/vagrant/director.toml
if on director "test -f /etc/dr-lb/director.toml"; then config=/etc/dr-lb/director.toml; fi

echo "== 1. dr-lb bench --quick on the director VM"
on director "cd /vagrant && sudo .venv/bin/dr-lb bench --quick --json /tmp/bench.json"
on director "cat /tmp/bench.json" > "$OUT/director-bench.json"

load() {   # load LABEL: wrk and iperf3 from the client; one line each into $OUT/load.txt
    local label=$1 wrk udp
    wrk=$(on client "wrk -t2 -c64 -d${SECONDS_PER_RUN}s http://$VIP/" | tr -d '\r' |
          awk '/Requests\/sec/ {print $2}')
    udp=$(on client "iperf3 -c $VIP -u -b 0 -l 1200 -t $SECONDS_PER_RUN -J" | tr -d '\r' |
          python3 -c 'import json,sys; e=json.load(sys.stdin)["end"]["sum"]; mbit, lost = e["bits_per_second"] / 1e6, e["lost_percent"]; print(f"{mbit:.0f} Mbit/s, {lost:.2f}% lost")')
    printf '%-6s HTTP %s requests/s; UDP %s\n' "$label" "$wrk" "$udp" | tee -a "$OUT/load.txt"
}

: > "$OUT/load.txt"
echo "== 2. load through dr-lb"
on director "sudo systemctl start dr-lb.service && sudo /vagrant/.venv/bin/dr-lb status --interface $nic >/dev/null"
load dr-lb
on director "sudo /vagrant/.venv/bin/dr-lb status --interface $nic"

echo "== 3. load through IPVS (ipvsadm -R with dr-lb ipvsadm export's rules)"
on director "sudo systemctl stop dr-lb.service && sudo modprobe ip_vs &&
  sudo ipvsadm -C && /vagrant/.venv/bin/dr-lb ipvsadm export $config | sudo ipvsadm -R &&
  sudo ip addr add $VIP/32 dev $nic && sudo ipvsadm -Ln"
trap 'on director "sudo ipvsadm -C; sudo ip addr del $VIP/32 dev $nic; sudo systemctl start dr-lb.service" || true' EXIT
load ipvs
on director "sudo ipvsadm -Ln --stats"
echo
echo "side by side (${SECONDS_PER_RUN} s each, same VMs):"
cat "$OUT/load.txt"
