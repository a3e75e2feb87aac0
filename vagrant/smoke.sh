#!/bin/bash
# A functional check of the scene (run on the host, from vagrant/, after `vagrant up`):
#
#  1. Three WRR cycles of HTTP requests from the client to the VIP (12 with weights
#     2:1:1): every one answered, by each real server in its weight's share exactly.
#  2. The client's ARP entry for the VIP is the director's MAC (dr-lb answers ARP for
#     the VIP; the real servers, with arp_ignore=1, do not).
#  3. `dr-lb status` on the director: the service, its real servers and their counters.
#
# Prints what it saw and exits non-zero on the first check that fails. Figures from VMs
# under emulation say nothing of speed: this checks that the scene works.
set -euo pipefail
cd "$(dirname "$0")"
scene() { python3 -c "import json,sys; s=json.load(open('scene.json')); print(eval(sys.argv[1]))" "$1"; }
VIP=$(scene 's["vip"]')
PORT=$(scene 's["port"]')
DIRECTOR_IP=$(scene '[h["address"] for h in s["hosts"] if h["role"]=="director"][0]')
# "name weight" per real server, and how many requests make three cycles.
REALS=$(scene '"\n".join(h["name"] + " " + str(h["weight"]) for h in s["hosts"] if h["role"]=="real")')
TOTAL=$(awk '{ w += $2 } END { print 3 * w }' <<<"$REALS")

on() { local vm=$1; shift; vagrant ssh "$vm" -c "$*" -- -q | tr -d '\r'; }
fail() { echo "smoke: FAIL: $*" >&2; exit 1; }

nic=$(on director "ip -o -4 addr show to $DIRECTOR_IP/32 | awk '{print \$2; exit}'")
[ -n "$nic" ] || fail "no interface of the director holds $DIRECTOR_IP"
director_mac=$(on director "cat /sys/class/net/$nic/address")

echo "== 1. $TOTAL requests from the client to http://$VIP:$PORT/"
on client "sudo ip neigh flush to $VIP" || true
answers=$(on client "for i in \$(seq $TOTAL); do curl -s -m 5 http://$VIP:$PORT/ || echo '(no answer)'; done")
seen=$(sort <<<"$answers" | uniq -c)
echo "$seen"
while read -r name weight; do
    want=$((3 * weight))
    got=$(grep -cx "$name" <<<"$answers" || true)
    [ "$got" -eq "$want" ] || fail "$name answered $got of $TOTAL requests, not $want (weight $weight)"
done <<<"$REALS"
echo "ok: each real server answered its weight's share"

echo "== 2. who answers ARP for $VIP"
vip_mac=$(on client "ip neigh show to $VIP" | awk '{ for (i = 1; i < NF; i++) if ($i == "lladdr") print $(i + 1) }')
echo "client's neighbour entry: ${vip_mac:-none}; the director's $nic: $director_mac"
[ "$vip_mac" = "$director_mac" ] || fail "the VIP's MAC on the client is not the director's"
echo "ok: the VIP resolves to the director"

echo "== 3. dr-lb status on the director"
on director "sudo /vagrant/.venv/bin/dr-lb status --interface $nic"
echo "smoke: all checks passed"
