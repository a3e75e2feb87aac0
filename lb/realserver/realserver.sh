#!/bin/sh
# dr-lb: prepare an LVS-DR real server, and check it. This file is the implementation:
# `dr-lb realserver up/down/check/script` run it with /bin/sh, and a real server without
# Python runs it as it is, or the copy `dr-lb realserver script VIP...` prints (the same
# file with its defaults line filled in).
#
#   sh realserver.sh up [--persist] [VIP...]
#       arp_ignore=1, arp_announce=2 for all, default and lo (seeds 001, 004), then each
#       VIP on lo as a /32 (labels lo:0, lo:1, ...; seed 000). Records the sysctl values
#       it changes and the VIPs in /run/dr-lb/realserver/net-<netns inode>. Each step is
#       printed as it is done. --persist also writes /etc/sysctl.d/90-dr-lb-realserver.conf,
#       this script with its VIPs as /etc/dr-lb/realserver.sh, and a systemd unit that
#       runs it at boot (enabled when systemd runs).
#   sh realserver.sh down [VIP...]
#       removes the VIPs from lo; puts the sysctls back once none of the VIPs `up` put on
#       lo is left there. VIPs given as arguments also leave what --persist wrote; the
#       built-in defaults (as the unit's ExecStop runs it) leave those files alone.
#   sh realserver.sh check [--port PORT] [--udp-port PORT] [--director ADDR] [--machine] [VIP...]
#       every pitfall from the seeds, with why and the fix; exits 1 if any is an error.
#       --machine: one finding a line, SEVERITY CODE WHAT WHY FIX separated by tabs, and
#       exit 0 once every check ran (dr-lb turns that into its table or JSON).
#   sh realserver.sh script [--port PORT] [--udp-port PORT] [--director ADDR] VIP...
#       prints this script with those as its defaults (the DEFAULT_ line below).
#
# Without VIP arguments the defaults below are used. Needs a POSIX sh, iproute2 (ip, and
# ss for check --port and --udp-port), awk and /proc.
set -u
LC_ALL=C
export LC_ALL
PATH=${PATH:+$PATH:}/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH

# The defaults: the one line `script` and `up --persist` fill in.
DEFAULT_VIPS="" DEFAULT_PORT="" DEFAULT_DIRECTOR="" DEFAULT_UDP_PORT=""

CONF=/proc/sys/net/ipv4/conf
STATE_DIR=/run/dr-lb/realserver
STATE_HEADER="# dr-lb realserver up: the sysctl values from before it, and the VIPs it put on lo"
SCOPES="all default lo"
PARAMS="arp_ignore arp_announce"
# Where --persist writes, under --root (/ except in tests).
PERSIST_SYSCTL=etc/sysctl.d/90-dr-lb-realserver.conf
PERSIST_SCRIPT=etc/dr-lb/realserver.sh
PERSIST_UNIT=etc/systemd/system/dr-lb-realserver.service
UNIT_NAME=dr-lb-realserver.service
INDENT="                            "
DID=""

die() { printf 'dr-lb: %s\n' "$*" >&2; exit 1; }
usage() {
    echo "usage: sh $0 up [--persist] | down | check [--port PORT] [--udp-port PORT] [--director ADDR] [--machine] | script [--port PORT] [--udp-port PORT] [--director ADDR], each with [VIP...]" >&2
    exit 2
}
need_root() { [ "$(id -u)" = 0 ] || die "permission denied: run as root (sudo sh $0 $1)"; }
say() { printf '%s\n' "$1"; DID=yes; }  # a step of up/down, printed as it is done

# ---- the texts ------------------------------------------------------------------------
# Each finding: severity, code, what, why, fix. The ARP findings come first: copied
# top-down, their fixes come before any that puts a VIP on lo.
PERSIST_NOTE="sysctl -w lasts until the next reboot: \`dr-lb realserver up --persist\` (or a file in /etc/sysctl.d) makes it permanent."
f_arp_ignore() { finding error arp-ignore "${dev}: effective arp_ignore is ${value} (all=${allval}, ${dev}=${devval})" "The kernel uses max(all, ${dev}) (seed 004). Only 1 or 2 make ${dev} answer ARP just for its own addresses: 0 and 3-7 also answer for a VIP on lo, so clients send the director's traffic here (seed 001); 8 answers nothing, not even for the real address. $PERSIST_NOTE" "sysctl -w ${settings}"; }
f_arp_announce() { finding error arp-announce "${dev}: effective arp_announce is ${value} (all=${allval}, ${dev}=${devval})" "The kernel uses max(all, ${dev}) (seed 004). Only 2 makes the ARP requests this host sends on ${dev} carry ${dev}'s own address; otherwise they can carry the VIP, and neighbours then send the VIP's traffic to this host (above 2 acts like 0). $PERSIST_NOTE" "sysctl -w ${settings}"; }
f_arp_ok() { finding ok arp-ok "${dev}: effective arp_ignore=${ignore}, arp_announce=${announce}" "" ""; }
f_lo_down() { finding error lo-down "lo is down" "While lo is down the kernel has no local route for the VIPs on it, so packets the director sends here for a VIP are dropped." "ip link set lo up"; }
f_vip_missing() { finding error vip-missing "${vip} is not configured on this host" "In DR the director rewrites only the destination MAC: packets arrive still addressed to ${vip}, and a host without that address drops them. Fix the ARP sysctls first (the fixes above, if any): a VIP on lo while arp_ignore is 0 is announced to the whole segment. \`dr-lb realserver up ${vip}\` (or the generated script's \`up\`) does both in that order, and with --persist they survive a reboot, which ip addr add does not." "ip addr add ${vip}/32 dev lo"; }
f_vip_prefix() { finding error vip-prefix "${vip} is on lo as /${prefix}, not /32" "On lo an address with a prefix makes its whole subnet local: ${vip}/${prefix} adds a 'local' route for the subnet through lo, so this host takes its neighbours' addresses for its own and its replies to them loop back into lo (older kernels also stop answering ARP for its own real address). Other hosts can no longer reach it (seed 000: NETMASK=255.255.255.0 on lo:0)." "${promote}ip addr del ${vip}/${prefix} dev lo${readd}"; }
f_vip_own_address() { finding error vip-own-address "${vip} is on ${dev} (/${prefix}) and is ${reason}" "A VIP is the address clients connect to, which the director owns; ${vip} looks like this real server's own address given as the VIP by mistake. Removing it from ${dev} would cut this host off the network, so no command is suggested for that." "check the VIP: give the address the director serves, not ${vip}"; }
f_vip_not_lo() { finding error vip-not-lo "${vip} is on ${dev} (/${prefix}), not on lo" "arp_ignore=1 hides the VIP only when it is on lo: with ${vip} on ${dev} this host answers ARP for it, and clients send their traffic here instead of to the director." "${promote}ip addr del ${vip}/${prefix} dev ${dev}${readd}"; }
f_vip_ok() { finding ok vip-ok "${vip}/32 is on lo" "" ""; }
f_port_closed() { finding error port-closed "nothing listens on TCP port ${port} for ${vip}" "DR delivers the client's packets to ${vip}:${port} unchanged, so the service must listen on ${vip} or on a wildcard address (0.0.0.0, or [::] without IPV6_V6ONLY)." "start the service on 0.0.0.0:${port} (or ${vip}:${port})"; }
f_port_wrong_address() { finding error port-wrong-address "TCP port ${port} listens only on ${addrs}, not on ${vip}" "DR delivers the client's packets to ${vip}:${port} unchanged; a server bound to the real address never sees them." "bind the service to 0.0.0.0:${port} (or ${vip}:${port}) and restart it"; }
f_port_v6_only() { finding error port-v6-only "TCP port ${port} listens only on [::] with IPV6_V6ONLY, not for ${vip}" "An IPv6 socket with IPV6_V6ONLY (nginx \`listen [::]:${port}\`, or net.ipv6.bindv6only=1) accepts no IPv4 connection, and DR delivers the client's packets to the IPv4 address ${vip}:${port}." "also listen on 0.0.0.0:${port} (nginx: add \`listen ${port};\`), or turn IPV6_V6ONLY off (nginx: \`listen [::]:${port} ipv6only=off;\`), and restart it"; }
f_port_ok() { finding ok port-ok "TCP port ${port} listens for ${vip}" "" ""; }
f_udp_port_closed() { finding error udp-port-closed "nothing is bound to UDP port ${port} for ${vip}" "DR delivers the client's datagrams to ${vip}:${port} unchanged, so the service must be bound to ${vip} (or to a wildcard address, if it answers from the address it was asked on)." "start the service on ${vip}:${port}"; }
f_udp_port_wrong_address() { finding error udp-port-wrong-address "UDP port ${port} is bound only to ${addrs}, not to ${vip}" "DR delivers the client's datagrams to ${vip}:${port} unchanged; a server bound to the real address never sees them." "bind the service to ${vip}:${port} and restart it"; }
f_udp_port_v6_only() { finding error udp-port-v6-only "UDP port ${port} is bound only to [::] with IPV6_V6ONLY, not for ${vip}" "An IPv6 socket with IPV6_V6ONLY receives no IPv4 datagram, and DR delivers the client's datagrams to the IPv4 address ${vip}:${port}." "bind the service to ${vip}:${port} and restart it"; }
f_udp_port_wildcard() { finding warning udp-port-wildcard "UDP port ${port} is bound to ${wild}, not to ${vip}" "A UDP server's reply leaves from the address its socket is bound to. Bound to ${wild}, the kernel picks the reply's source by the route to the client: this host's own address, not ${vip}, and the client, which sent to ${vip}, drops the reply (a TCP listener on a wildcard address has no such problem: its connections answer from the address they were made to). A server that sets the source of each reply itself (IP_PKTINFO, as dnsmasq does) is fine." "bind the service to ${vip}:${port} (iperf3 -s -B ${vip}), or make sure it answers from the address it was asked on"; }
f_udp_port_ok() { finding ok udp-port-ok "UDP port ${port} is bound to ${vip}" "" ""; }
f_no_default_route() { finding warning no-default-route "there is no default route" "In DR this host answers clients directly (seed 002, DR point 5): replies to clients outside its own subnets need a default route to the router." "ip route add default via ROUTER_ADDRESS"; }
f_gateway_director() { finding error gateway-director "the default route goes through the director ${director}" "In DR replies go from the real server straight to the client through the router, never back through the director (seed 002, DR point 5); the director only balances the inbound half and does not route the replies." "ip route replace default via ROUTER_ADDRESS"; }
f_gateway_ok() { finding ok gateway-ok "the default route goes through ${gateway}, not the director" "" ""; }
# What up and down print, and why up refuses.
m_lo_up() { say "brought lo up"; }
m_added() { say "added ${vip}/32 on lo as ${label}"; }
m_dropped() { say "removed ${vip}/${prefix} from lo: a VIP on lo must be /32 (seed 000)"; }
m_set() { say "set ${name} = ${value}"; }
m_removed() { say "removed ${vip}/${prefix} from lo"; }
m_not_on_lo() { say "${vip} is not on lo: nothing to remove"; }
m_kept() { say "left the ARP sysctls as they are: lo still has ${others}"; }
m_restored() { say "restored ${name} = ${value}"; }
m_no_record() { say "no record of the ARP sysctls from before \`realserver up\`: left as they are"; }
m_stale_record() { say "dropped a stale record of the ARP sysctls (none of its VIPs was on lo, or a sysctl has changed since \`realserver up\`): left them as they are"; }
m_on_other() { die "${vip} is on ${dev} (/${prefix}); a real server must have it only on lo, or it answers ARP for it. Remove it first: ${promote}ip addr del ${vip}/${prefix} dev ${dev}"; }
m_own_address() { die "${vip} is on ${dev} (/${prefix}) and is ${reason}: it looks like this host's own address, not a VIP. Give the address the director serves; do not remove ${vip} from ${dev}"; }
REASON_ONLY="this host's only address outside lo"
REASON_DEFAULT_SOURCE="the source address of this host's default route"

# Effective values (max of all and the interface) that hide a VIP on lo and still answer
# for the real address. arp_ignore 3 only hides scope-host addresses, 4-7 are reserved
# (the kernel replies as with 0) and 8 answers nothing, not even for the real address.
# arp_announce: only 2 always picks the interface's own address; above 2 acts like 0.
good() {  # PARAM VALUE: does this effective value hide a VIP on lo?
    case $1 in
        arp_ignore) case $2 in 1|2) return 0;; esac;;
        arp_announce) case $2 in 2) return 0;; esac;;
    esac
    return 1
}
target_of() {  # PARAM: the value up writes
    case $1 in
        arp_ignore) echo 1;;
        arp_announce) echo 2;;
    esac
}

# ---- reading this host ----------------------------------------------------------------
addr_table() {  # "dev address prefix primary|secondary" for each IPv4 address, in interface order
    ip -o -4 addr show | awk '{ split($2, d, /[:@]/); split($4, a, "/"); s = "primary"
        if ($5 == "peer") split($6, q, "/"); else q[2] = a[2]
        for (i = 5; i <= NF; i++) if ($i == "secondary") s = "secondary"
        print d[1], a[1], (q[2] == "" ? 32 : q[2]), s }'
}
where_is() {  # VIP: "dev prefix primary|secondary" for each copy of it, in interface order
    addr_table | awk -v v="$1" '$2 == v { print $1, $3, $4 }'
}
lo_prefixes() { where_is "$1" | awk '$1 == "lo" { print $2 }'; }
on_lo() { [ -n "$(lo_prefixes "$1")" ]; }
free_label() {
    n=0
    while [ -n "$(ip -o -4 addr show dev lo label "lo:$n")" ]; do n=$((n + 1)); done
    echo "lo:$n"
}
lo_is_up() { [ -n "$(ip link show dev lo up)" ]; }
arp_interfaces() {  # the interfaces ARP can answer on: all but lo (and all/default)
    for d in "$CONF"/*/; do
        d=${d%/}; d=${d##*/}
        case $d in all|default|lo) ;; *) echo "$d";; esac
    done
}
read_sysctl() { v=$(cat "$CONF/$1" 2>/dev/null) || v=0; echo "${v:-0}"; }
name_of() {  # dev/param -> net.ipv4.conf.dev.param (dots in dev become slashes)
    printf 'net.ipv4.conf.%s.%s' "$(printf '%s' "${1%/*}" | tr . /)" "${1##*/}"
}
max() { if [ "$1" -ge "$2" ]; then echo "$1"; else echo "$2"; fi; }
IPNUM='function ipnum(ip,  x) { split(ip, x, "."); return ((x[1] * 256 + x[2]) * 256 + x[3]) * 256 + x[4] }
function same_net(a, b, p) { return int(ipnum(a) / 2 ^ (32 - p)) == int(ipnum(b) / 2 ^ (32 - p)) }'
promote_of() {  # DEV ADDR PREFIX: what must come before `ip addr del` so that it removes
    # only that address: deleting a primary also deletes the secondaries of its subnet
    # unless promote_secondaries is on (all or DEV); if the VIP was added first, the real
    # address is such a secondary and the host falls off the network
    addr_table | awk -v dev="$1" -v a="$2" -v p="$3" "$IPNUM"'
        $1 != dev { next }
        $2 == a && $3 == p && $4 == "primary" { prim = 1; next }
        $4 == "secondary" && $3 == p && $2 != a && same_net(a, $2, p) { sec = 1 }
        END { exit !(prim && sec) }' || return 0
    [ "$(read_sysctl all/promote_secondaries)" = 0 ] || return 0
    [ "$(read_sysctl "$1/promote_secondaries")" = 0 ] || return 0
    printf 'sysctl -w %s=1 && ' "$(name_of "$1/promote_secondaries")"
}
default_route() {  # "gateway dev src" of the main table's preferred default route; "-": none given
    ip -o -4 route show table main exact 0.0.0.0/0 | awk '
        { gw = "0.0.0.0"; dev = "-"; src = "-"; m = 0
          for (i = 1; i < NF; i++) {
              if ($i == "nexthop") break
              if ($i == "via") {
                  gw = $(i + 1)
                  if (gw == "inet") gw = $(i + 2); else if (gw == "inet6") gw = "0.0.0.0"
              } else if ($i == "dev") dev = $(i + 1)
              else if ($i == "src") src = $(i + 1)
              else if ($i == "metric") m = $(i + 1) + 0
          }
          if (!n++ || m < best) { best = m; out = gw " " dev " " src } }
        END { if (n) print out }'
}
default_source() {  # the default route's src, or the address the kernel picks for it
    # (inet_select_addr): the first primary address on its interface whose subnet holds
    # the gateway, else the first primary address there
    route=$(default_route)
    [ -n "$route" ] || return 0
    # shellcheck disable=SC2086
    set -- $route
    if [ "$3" != - ]; then echo "$3"; return 0; fi
    addr_table | awk -v dev="$2" -v g="$1" "$IPNUM"'
        $1 == dev && $4 == "primary" {
            if (first == "") first = $2
            if (g != "0.0.0.0" && same_net($2, g, $3)) { print $2; found = 1; exit }
        }
        END { if (!found && first != "") print first }'
}
own_reason() {  # VIP, found on a real interface: why it looks like this host's own
    # address (the real IP given as the VIP by mistake), or nothing
    outside=$(addr_table | awk '$1 != "lo" { print $2 }' | sort -u)
    if [ "$outside" = "$1" ]; then echo "$REASON_ONLY"; return 0; fi
    if [ "$(default_source)" = "$1" ]; then echo "$REASON_DEFAULT_SOURCE"; fi
}

# ---- the record of what up changed ----------------------------------------------------
# One file per network namespace (/run is shared by every `ip netns exec`): the sysctl
# values from before up (dev/param=value) and the VIPs it put on lo (vip=ADDR). A record
# is trusted only while one of its VIPs is on lo and every sysctl in it still holds what
# up wrote; otherwise it is stale (a namespace that died without down, whose inode was
# reused) and is dropped. Other addresses on lo (an anycast /32, say) are not ours.
netns_inode() {
    stat -L -c %i /proc/self/ns/net 2>/dev/null || ls -Li /proc/self/ns/net | awk '{ print $1 }'
}
state_file() { echo "$STATE_DIR/net-$(netns_inode)"; }
state_sysctls() { awk -F= '!/^#/ && NF > 1 && $1 ~ /\// { print }' "$1"; }
state_vips() { awk -F= '!/^#/ && NF > 1 && $1 == "vip" { print substr($0, 5) }' "$1"; }
state_consistent() {  # SYSCTLS: every recorded key still holds the value up wrote
    while IFS='=' read -r key val; do
        [ -n "$key" ] || continue
        cur=$(cat "$CONF/$key" 2>/dev/null) || continue
        [ "$cur" = "$(target_of "${key##*/}")" ] || return 1
    done <<EOF
$1
EOF
    return 0
}
record_valid() {  # SYSCTLS VIPS: is the record ours?
    found=""
    while read -r v; do
        [ -z "$v" ] || ! on_lo "$v" || found=yes
    done <<EOF
$2
EOF
    [ -n "$found" ] && state_consistent "$1"
}
write_state() {  # FILE SYSCTLS VIPS (one a line)
    mkdir -p "$STATE_DIR" || exit 1
    { echo "$STATE_HEADER"
      [ -z "$2" ] || printf '%s\n' "$2"
      printf '%s\n' "$3" | sed '/^$/d; s/^/vip=/'
    } > "$1" || exit 1
}
remember() {  # CHANGES: record the values up is about to change, and the VIPs. An
    # earlier record is kept (and extended) only while it is valid; otherwise it is stale
    # and replaced, even when nothing is about to change.
    sf=$(state_file)
    old=""
    old_vips=""
    if [ -f "$sf" ]; then old=$(state_sysctls "$sf"); old_vips=$(state_vips "$sf"); fi
    if [ -f "$sf" ] && record_valid "$old" "$old_vips"; then
        new=$old
        while IFS='=' read -r key val; do
            [ -n "$key" ] || continue
            printf '%s\n' "$old" | awk -F= -v k="$key" '$1 == k { f = 1 } END { exit !f }' ||
                new="${new:+$new
}$key=$val"
        done <<EOF
$1
EOF
        new_vips=$old_vips
        for vip in $VIPS; do
            printf '%s\n' "$old_vips" | grep -qxF "$vip" || new_vips="${new_vips:+$new_vips
}$vip"
        done
        write_state "$sf" "$new" "$new_vips"
    else
        # shellcheck disable=SC2086
        write_state "$sf" "$1" "$(printf '%s\n' $VIPS)"
    fi
}

# ---- up / down ------------------------------------------------------------------------
sysctl_writes() {  # "dev/param value" the real server needs: all/default/lo, plus any
    # interface whose own value would win over all in max(all, interface) and be wrong
    for scope in $SCOPES; do
        for param in $PARAMS; do echo "$scope/$param $(target_of "$param")"; done
    done
    for dev in $(arp_interfaces); do
        for param in $PARAMS; do
            cur=$(cat "$CONF/$dev/$param" 2>/dev/null) || continue
            t=$(target_of "$param")
            if ! good "$param" "$cur" && [ "$cur" -gt "$t" ]; then echo "$dev/$param $t"; fi
        done
    done
}
changes_of() {  # stdin: "key value"; prints key=current for the keys that differ
    while read -r key val; do
        [ -n "$key" ] || continue
        cur=$(cat "$CONF/$key" 2>/dev/null) || continue
        [ "$cur" = "$val" ] || printf '%s=%s\n' "$key" "$cur"
    done
}

cmd_up() {
    # A VIP on a real interface is answered at L2 here: refuse, with the command that
    # removes it, unless it looks like this host's own address (then no such command).
    for vip in $VIPS; do
        while read -r dev prefix _; do
            [ -n "$dev" ] && [ "$dev" != lo ] || continue
            reason=$(own_reason "$vip")
            [ -z "$reason" ] || m_own_address
            promote=$(promote_of "$dev" "$vip" "$prefix")
            m_on_other
        done <<EOF
$(where_is "$vip")
EOF
    done
    writes=$(sysctl_writes)
    remember "$(printf '%s\n' "$writes" | changes_of)"
    if ! lo_is_up; then ip link set dev lo up || exit 1; m_lo_up; fi
    # The sysctls before the VIPs: a VIP on lo while arp_ignore is 0 gets announced.
    while read -r key value; do
        [ -n "$key" ] || continue
        cur=$(cat "$CONF/$key" 2>/dev/null) || continue
        [ "$cur" != "$value" ] || continue
        printf '%s\n' "$value" > "$CONF/$key" || exit 1
        name=$(name_of "$key")
        m_set
    done <<EOF
$writes
EOF
    for vip in $VIPS; do
        # Every copy that is not /32 goes (seed 000); the /32 is added if missing.
        has32=""
        for prefix in $(lo_prefixes "$vip"); do
            if [ "$prefix" = 32 ]; then has32=yes; continue; fi
            ip addr del "$vip/$prefix" dev lo || exit 1
            m_dropped
        done
        [ -z "$has32" ] || continue
        label=$(free_label)
        ip addr add "$vip/32" dev lo label "$label" || exit 1
        m_added
    done
}

cmd_down() {
    sf=$(state_file)
    have=""
    valid=""
    rec=""
    rec_vips=""
    if [ -f "$sf" ]; then
        have=yes
        rec=$(state_sysctls "$sf")
        rec_vips=$(state_vips "$sf")
        if record_valid "$rec" "$rec_vips"; then valid=yes; fi
    fi
    for vip in $VIPS; do
        prefixes=$(lo_prefixes "$vip")
        for prefix in $prefixes; do
            ip addr del "$vip/$prefix" dev lo || exit 1
            m_removed
        done
        [ -n "$prefixes" ] || m_not_on_lo
    done
    if [ -z "$have" ]; then m_no_record; return 0; fi
    if [ -z "$valid" ]; then rm -f "$sf"; m_stale_record; return 0; fi
    left=$(printf '%s\n' "$rec_vips" | awk -v drop="$VIPS" '
        BEGIN { n = split(drop, d, " "); for (i = 1; i <= n; i++) x[d[i]] = 1 }
        NF && !($0 in x)')
    others=""
    while read -r v; do
        [ -z "$v" ] || ! on_lo "$v" || others="${others:+$others }$v"
    done <<EOF
$left
EOF
    if [ -n "$others" ]; then write_state "$sf" "$rec" "$left"; m_kept; return 0; fi
    if [ -z "$rec" ]; then rm -f "$sf"; m_no_record; return 0; fi
    while IFS='=' read -r key value; do
        [ -e "$CONF/$key" ] || continue
        printf '%s\n' "$value" > "$CONF/$key" || exit 1
        name=$(name_of "$key")
        m_restored
    done <<EOF
$rec
EOF
    rm -f "$sf"
}

# ---- --persist ------------------------------------------------------------------------
print_self() {  # FILE VIPS PORT DIRECTOR UDP_PORT: FILE (this script) with those as its
    # defaults (FILE may be a copy from before DEFAULT_UDP_PORT)
    awk -v line="DEFAULT_VIPS=\"$2\" DEFAULT_PORT=\"$3\" DEFAULT_DIRECTOR=\"$4\" DEFAULT_UDP_PORT=\"$5\"" '
        !done && sub(/^DEFAULT_VIPS="[^"]*" DEFAULT_PORT="[^"]*" DEFAULT_DIRECTOR="[^"]*"( DEFAULT_UDP_PORT="[^"]*")?/, line) { done = 1 }
        { print }
        END { if (!done) exit 1 }' "$1" || die "$1 has no DEFAULT_VIPS line"
}
sysctl_conf() {
    echo "# Written by \`dr-lb realserver up --persist\`; removed by \`dr-lb realserver down\`."
    echo "# LVS-DR real server: answer ARP only for addresses on the receiving interface"
    echo "# (not for the VIPs on lo), and announce only the interface's own address."
    echo "# For a real interface the kernel uses max(all, interface) (seed 004)."
    for scope in $SCOPES; do
        for param in $PARAMS; do echo "$(name_of "$scope/$param") = $(target_of "$param")"; done
    done
}
unit_file() {
    cat <<EOF
# Written by \`dr-lb realserver up --persist\`; removed by \`dr-lb realserver down\`.
[Unit]
Description=dr-lb LVS-DR real server: VIPs on lo as /32 and the ARP sysctls
DefaultDependencies=no
After=local-fs.target systemd-sysctl.service
Wants=network-pre.target
Before=network-pre.target shutdown.target
Conflicts=shutdown.target

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/sh /$PERSIST_SCRIPT up
ExecStop=/bin/sh /$PERSIST_SCRIPT down

[Install]
WantedBy=multi-user.target
EOF
}
persisted_vips() {  # the VIPs of the persisted script (VIPS= in copies from before 0.2)
    sed -n 's/^\(DEFAULT_\)\{0,1\}VIPS="\([^"]*\)".*/\2/p' "$ROOT/$PERSIST_SCRIPT" 2>/dev/null
}
write_file() {  # REL MODE WHAT COMMAND...: COMMAND's output becomes ROOT/REL. Written
    # aside and renamed: a shell running the old file goes on reading the old one.
    rel=$1 mode=$2 what=$3
    shift 3
    mkdir -p "$(dirname "$ROOT/$rel")" || exit 1
    tmp="$ROOT/$rel.new"
    if ! "$@" > "$tmp" || ! chmod "$mode" "$tmp" || ! mv -f "$tmp" "$ROOT/$rel"; then
        rm -f "$tmp"
        exit 1
    fi
    say "wrote /$rel ($what)"
}
systemd_here() {  # does systemd run the root we write to? (a scratch --root has no run/)
    [ -d "$ROOT/run/systemd/system" ] && command -v systemctl >/dev/null 2>&1
}
run_systemctl() {
    err=$(systemctl "$@" 2>&1 >/dev/null) || die "\`systemctl $*\` failed: $err"
    say "ran systemctl $*"
}
self_or() {  # FILE: this script as a file, else FILE
    if [ -f "$0" ]; then echo "$0"; else echo "$1"; fi
}
persist_up() {
    [ -f "$0" ] || die "--persist copies this script: run it from a file (sh FILE up --persist)"
    all=$(persisted_vips)
    for vip in $VIPS; do
        case " $all " in *" $vip "*) ;; *) all="${all:+$all }$vip";; esac
    done
    write_file "$PERSIST_SYSCTL" 644 "the ARP sysctls, applied at boot" sysctl_conf
    write_file "$PERSIST_SCRIPT" 755 "puts $all on lo at boot" print_self "$0" "$all" "" "" ""
    write_file "$PERSIST_UNIT" 644 "runs that script at boot" unit_file
    if systemd_here; then
        run_systemctl daemon-reload
        run_systemctl enable "$UNIT_NAME"
    else
        say "systemd is not running here: on a systemd host run \`systemctl enable $UNIT_NAME\`; elsewhere run \`/bin/sh /$PERSIST_SCRIPT up\` at boot (e.g. from /etc/rc.local)"
    fi
}
persist_down() {  # take VIPS out of what --persist wrote; with none left, stop and disable
    # the unit (its ExecStop runs this script's down while the script is still there,
    # and finds nothing left to undo) and remove the files
    before=$(persisted_vips)
    left=""
    hit=""
    for vip in $before; do
        case " $VIPS " in *" $vip "*) hit=yes;; *) left="${left:+$left }$vip";; esac
    done
    [ -n "$hit" ] || return 0
    if [ -n "$left" ]; then
        write_file "$PERSIST_SCRIPT" 755 "puts $left on lo at boot" \
            print_self "$(self_or "$ROOT/$PERSIST_SCRIPT")" "$left" "" "" ""
        return 0
    fi
    if systemd_here; then run_systemctl disable --now "$UNIT_NAME"; fi
    for rel in "$PERSIST_UNIT" "$PERSIST_SCRIPT" "$PERSIST_SYSCTL"; do
        [ -e "$ROOT/$rel" ] || continue
        rm -f "$ROOT/$rel" || exit 1
        say "removed /$rel"
    done
    rmdir "$(dirname "$ROOT/$PERSIST_SCRIPT")" 2>/dev/null || :
    if systemd_here; then run_systemctl daemon-reload; fi
}

# ---- check ----------------------------------------------------------------------------
NERR=0
NWARN=0
NOK=0
MACHINE=""
finding() {  # SEVERITY CODE WHAT WHY FIX
    case $1 in
        error) NERR=$((NERR + 1));;
        warning) NWARN=$((NWARN + 1));;
        ok) NOK=$((NOK + 1));;
    esac
    if [ -n "$MACHINE" ]; then printf '%s\t%s\t%s\t%s\t%s\n' "$@"; return 0; fi
    printf '%-8s %-18s %s\n' "$1" "$2" "$3"
    [ -z "$4" ] || printf '%swhy: %s\n' "$INDENT" "$4"
    [ -z "$5" ] || printf '%sfix: %s\n' "$INDENT" "$5"
}
fix_settings() {  # PARAM ALL DEV_VALUE DEV: the sysctl writes that make max(all, dev)
    # good: all to the target unless it is good, and DEV too if its own value is bad
    # and above the target
    t=$(target_of "$1")
    s=""
    good "$1" "$2" || s="$(name_of "all/$1")=$t"
    if ! good "$1" "$3" && [ "$3" -gt "$t" ]; then s="${s:+$s }$(name_of "$4/$1")=$t"; fi
    printf '%s' "$s"
}
listeners() {  # t|u PORT: each TCP listener's (t) or bound UDP socket's (u) address, one a
    # line: 0.0.0.0, an IPv4 address,
    # ::ffff:IPV4, * ([::] that also accepts IPv4) or :: ([::] with IPV6_V6ONLY). ss (since
    # iproute2 4.17) writes [::]:PORT for a v6only socket and *:PORT for a dual-stack one;
    # an older ss writes :::PORT for both, taken here as dual-stack. A socket bound to a
    # device (ADDR%DEV:PORT) counts as bound to ADDR.
    ss "-l$1n" | awk -v p="$2" 'NR > 1 {
        a = $4; i = length(a)
        while (i > 0 && substr(a, i, 1) != ":") i--
        if (i == 0 || substr(a, i + 1) != p) next
        a = substr(a, 1, i - 1); sub(/%.*/, "", a)
        if (a ~ /^\[.*\]$/) a = substr(a, 2, length(a) - 2)
        else if (a == "::") a = "*"
        print a }'
}

has_address() {  # LISTENERS VIP: is one of them bound to VIP itself?
    printf '%s\n' "$1" | awk -v v="$2" '$0 == v || $0 == "::ffff:" v { f = 1 } END { exit !f }'
}
has_wildcard() {  # LISTENERS: is one of them bound to a wildcard that takes IPv4?
    printf '%s\n' "$1" | awk '$0 == "0.0.0.0" || $0 == "*" { f = 1 } END { exit !f }'
}
other_addresses() {  # LISTENERS: the IPv4 addresses they are bound to, not wildcards,
    # on one line
    printf '%s\n' "$1" | awk 'NF && !/:/ && $0 != "*" && $0 != "0.0.0.0"' | sort -u |
        tr '\n' ' ' | sed 's/ $//'
}
v6_only() {  # LISTENERS: is one of them [::] with IPV6_V6ONLY?
    printf '%s\n' "$1" | grep -qx '::'
}
need_ss() {  # OPTION
    command -v ss >/dev/null 2>&1 || die "check $1 needs ss (iproute2)"
}

cmd_check() {
    [ -n "$MACHINE" ] || printf '%-8s %-18s %s\n' SEVERITY CHECK WHAT
    # The ARP sysctls first: copied top-down, their fixes come before any that puts a
    # VIP on lo.
    all_ign=$(read_sysctl all/arp_ignore)
    all_ann=$(read_sysctl all/arp_announce)
    for dev in $(arp_interfaces); do
        dev_ign=$(read_sysctl "$dev/arp_ignore")
        dev_ann=$(read_sysctl "$dev/arp_announce")
        ignore=$(max "$all_ign" "$dev_ign")
        announce=$(max "$all_ann" "$dev_ann")
        bad=""
        if ! good arp_ignore "$ignore"; then
            bad=yes value=$ignore allval=$all_ign devval=$dev_ign
            settings=$(fix_settings arp_ignore "$all_ign" "$dev_ign" "$dev")
            f_arp_ignore
        fi
        if ! good arp_announce "$announce"; then
            bad=yes value=$announce allval=$all_ann devval=$dev_ann
            settings=$(fix_settings arp_announce "$all_ann" "$dev_ann" "$dev")
            f_arp_announce
        fi
        [ -n "$bad" ] || f_arp_ok
    done

    lo_vip=""
    for vip in $VIPS; do ! on_lo "$vip" || lo_vip=yes; done
    if [ -n "$lo_vip" ] && ! lo_is_up; then f_lo_down; fi
    for vip in $VIPS; do
        locs=$(where_is "$vip")
        if [ -z "$locs" ]; then f_vip_missing; continue; fi
        # Only the first fix that removes a copy adds the /32, when it is not on lo: a
        # second `ip addr add` would fail (File exists).
        readd=" && ip addr add $vip/32 dev lo"
        for prefix in $(lo_prefixes "$vip"); do [ "$prefix" != 32 ] || readd=""; done
        while read -r dev prefix _; do
            if [ "$dev" = lo ] && [ "$prefix" = 32 ]; then f_vip_ok; continue; fi
            reason=""
            [ "$dev" = lo ] || reason=$(own_reason "$vip")
            if [ -n "$reason" ]; then f_vip_own_address; continue; fi
            promote=$(promote_of "$dev" "$vip" "$prefix")
            if [ "$dev" = lo ]; then f_vip_prefix; else f_vip_not_lo; fi
            readd=""
        done <<EOF
$locs
EOF
    done

    if [ -n "$PORT" ]; then
        need_ss --port
        port=$PORT
        found=$(listeners t "$PORT")
        addrs=$(other_addresses "$found")
        for vip in $VIPS; do
            if has_address "$found" "$vip" || has_wildcard "$found"; then
                f_port_ok
            elif [ -n "$addrs" ]; then
                f_port_wrong_address
            elif v6_only "$found"; then
                f_port_v6_only
            else
                f_port_closed
            fi
        done
    fi
    if [ -n "$UDP_PORT" ]; then
        need_ss --udp-port
        port=$UDP_PORT
        found=$(listeners u "$UDP_PORT")
        addrs=$(other_addresses "$found")
        wild=$(printf '%s\n' "$found" | awk '$0 == "0.0.0.0" { print; exit }
                                         $0 == "*" { print "[::]"; exit }')
        for vip in $VIPS; do
            # Bound to the VIP itself: its replies leave from the VIP, whatever else is
            # bound to the port (a server that binds each address binds a wildcard too).
            if has_address "$found" "$vip"; then
                f_udp_port_ok
            elif [ -n "$wild" ]; then
                f_udp_port_wildcard
            elif [ -n "$addrs" ]; then
                f_udp_port_wrong_address
            elif v6_only "$found"; then
                f_udp_port_v6_only
            else
                f_udp_port_closed
            fi
        done
    fi

    if [ -n "$DIRECTOR" ]; then
        director=$DIRECTOR
        route=$(default_route)
        if [ -z "$route" ]; then
            f_no_default_route
        else
            gateway=${route%% *}
            if [ "$gateway" = "$DIRECTOR" ]; then f_gateway_director; else f_gateway_ok; fi
        fi
    fi
    [ -z "$MACHINE" ] || return 0
    echo "$NERR error(s), $NWARN warning(s), $NOK check(s) passed"
    [ "$NERR" -eq 0 ]
}

# ---- arguments ------------------------------------------------------------------------
valid_port() {  # PORT: prints it without leading zeros if it is 1-65535
    case $1 in ''|*[!0-9]*) return 1;; esac
    p=$1
    while [ "${p#0}" != "$p" ]; do p=${p#0}; done
    [ -n "$p" ] && [ ${#p} -le 5 ] && [ "$p" -ge 1 ] && [ "$p" -le 65535 ] || return 1
    echo "$p"
}
valid_ipv4() {  # ADDR: four decimal numbers 0-255 without leading zeros, as Python's ipaddress
    case $1 in ''|*[!0-9.]*) return 1;; esac
    printf '%s\n' "$1" | awk -F. '{
        if (NF != 4) exit 1
        for (i = 1; i <= 4; i++) if ($i !~ /^(0|[1-9][0-9]?[0-9]?)$/ || $i + 0 > 255) exit 1
        ok = 1 }
        END { exit !ok }'
}
bad_vip() {  # VIP (a valid IPv4): why it can never be a VIP, or nothing
    printf '%s\n' "$1" | awk -F. '{
        if ($1 == 0) print "the unspecified/\"this network\" range 0.0.0.0/8"
        else if ($1 == 127) print "loopback (127.0.0.0/8): lo owns it already, and changing it breaks localhost"
        else if ($1 >= 224 && $1 <= 239) print "multicast (224.0.0.0/4)"
        else if ($0 == "255.255.255.255") print "the broadcast address"
        else if ($1 >= 240) print "reserved (240.0.0.0/4)" }'
}
bad_arg() { echo "dr-lb: unknown argument for $cmd: $1" >&2; usage; }

cmd=${1:-}
[ $# -eq 0 ] || shift
PORT=$DEFAULT_PORT
UDP_PORT=$DEFAULT_UDP_PORT
DIRECTOR=$DEFAULT_DIRECTOR
PERSIST=""
ROOT=/
ARG_VIPS=""
while [ $# -gt 0 ]; do
    case $1 in
        --port) [ $# -ge 2 ] || usage; PORT=${2:-none}; shift 2;;
        --port=*) PORT=${1#--port=}; PORT=${PORT:-none}; shift;;
        --udp-port) [ $# -ge 2 ] || usage; UDP_PORT=${2:-none}; shift 2;;
        --udp-port=*) UDP_PORT=${1#--udp-port=}; UDP_PORT=${UDP_PORT:-none}; shift;;
        --director) [ $# -ge 2 ] || usage; DIRECTOR=${2:-none}; shift 2;;
        --director=*) DIRECTOR=${1#--director=}; DIRECTOR=${DIRECTOR:-none}; shift;;
        --persist) [ "$cmd" = up ] || bad_arg "$1"; PERSIST=yes; shift;;
        --machine) [ "$cmd" = check ] || bad_arg "$1"; MACHINE=yes; shift;;
        # Hidden: write and remove the --persist files under this directory (tests).
        --root) [ $# -ge 2 ] || usage; ROOT=$2; shift 2;;
        -*) bad_arg "$1";;
        *)
            valid_ipv4 "$1" || die "$1: give an IPv4 address (as 192.168.0.21)"
            case " $ARG_VIPS " in *" $1 "*) ;; *) ARG_VIPS="${ARG_VIPS:+$ARG_VIPS }$1";; esac
            shift;;
    esac
done
VIPS=${ARG_VIPS:-$DEFAULT_VIPS}
for vip in $VIPS; do   # before anything changes: these would break the host, not serve
    why=$(bad_vip "$vip")
    [ -z "$why" ] || die "$vip cannot be a VIP: it is $why; give the address the director serves"
done
if [ -n "$PORT" ]; then
    p=$(valid_port "$PORT") || die "--port $PORT: give a port number (1-65535)"
    PORT=$p
fi
if [ -n "$UDP_PORT" ]; then
    p=$(valid_port "$UDP_PORT") || die "--udp-port $UDP_PORT: give a port number (1-65535)"
    UDP_PORT=$p
fi
if [ -n "$DIRECTOR" ]; then
    valid_ipv4 "$DIRECTOR" || die "--director $DIRECTOR: give an IPv4 address (as 192.168.0.11)"
fi
case $cmd in up|down|check|script) ;; *) usage;; esac
if [ -z "$VIPS" ]; then echo "dr-lb: give the VIPs: sh $0 $cmd VIP..." >&2; usage; fi
case $cmd in
    up)
        need_root up
        cmd_up
        [ -z "$PERSIST" ] || persist_up
        [ -n "$DID" ] || echo "nothing to do: already prepared";;
    down)
        need_root down
        cmd_down
        [ -z "$ARG_VIPS" ] || persist_down;;
    check) cmd_check;;
    script)
        [ -f "$0" ] || die "script prints this file: run it from a file (sh FILE script VIP...)"
        print_self "$0" "$VIPS" "$PORT" "$DIRECTOR" "$UDP_PORT";;
esac
