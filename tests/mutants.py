"""The deliberate bugs `python -m tests.mutation` (`scripts/dev.sh mutate`) puts into a copy
of bpf/, one at a time, to check that the packet tests catch them.

Each mutant replaces one exact piece of text that must occur exactly once in its file:
when the C changes so that a pattern no longer matches (or matches twice), the mutation
run and tests/test_mutants.py fail and name the mutant, and the pattern is updated with
the change. The list grows with each behaviour the program gains: README's "Data plane,
in short" and every counter of enum drlb_counter have at least one mutant each (tagged
in `covers`; tests/test_mutants.py checks both).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Mutant:
    name: str
    find: str                  # exact text, exactly once in `file`
    replace: str
    covers: tuple[str, ...]    # behaviours (BEHAVIOURS) and counters (counter:<name>)
    file: str = "dr_lb.c"      # in bpf/

    def apply(self, text: str) -> str:
        n = text.count(self.find)
        if n != 1:
            raise MutantDoesNotApply(
                f"mutant {self.name}: its pattern occurs {n} times in bpf/{self.file} "
                f"(must be exactly once); update tests/mutants.py: {self.find!r}")
        return text.replace(self.find, self.replace, 1)


class MutantDoesNotApply(Exception):
    pass


# README "Data plane, in short", one tag per claim.
BEHAVIOURS = {
    "conn-5-tuple": "connections: LRU hash keyed by the 5-tuple",
    "tcp-states": "TCP state from the client's flags: SYN, ACK, FIN, RST",
    "tcp-timeouts": "each TCP state lives its own timeout",
    "idle-restart": "a connection's idle timeout restarts on traffic",
    "udp-timeout": "UDP lives `udp` seconds",
    "tcp-no-conn-pass": "a TCP non-SYN without a live connection is passed",
    "port-reuse": "a SYN on a FIN_WAIT/CLOSE entry starts a new connection",
    "sched-tables": "sh, mh, lc/wlc read their service's tables in sched_table",
    "wrr-order": "WRR follows the sequence laid out by the control plane",
    "wrr-lock": "the WRR position is shared by all CPUs under a bpf_spin_lock",
    "unschedulable": "weight 0 or an unknown MAC takes no new connection",
    "persist-key": "a template per (client AND netmask, VIP, port, protocol)",
    "persist-alive": "a template is kept alive while its connections are used",
    "persist-expiry": "a template expires after `persistent` idle seconds",
    "persist-quiesced": "a template whose server was quiesced is not followed",
    "arp-vip-only": "ARP is answered for the VIPs, and only for them",
    "ping-vip-only": "ping is answered for the VIPs, and only for them",
    "exit-counters": "every exit path bumps a per-CPU counter",
    "vip-prefilter": "a frame to no VIP leaves at the VIP pre-filter; a VIP's passes it",
    "stats": "per service and real server: connections, packets, IP bytes",
    "mac-rewrite": "only the MACs change on the way to a real server",
    "reschedule": "a failed server's connections go elsewhere with on_failure=reschedule",
    "probe-reply": "a real server's answer to a DR-path probe is hidden from the kernel",
    "our-mac-only": "only frames sent to the director's own MAC are balanced or answered",
    "arp-bad-source": "ARP is never answered to a broadcast, multicast or zero sender",
    "syn-table": "a SYN waits in syn_table until the client's next packet moves it to "
                 "conn_table",
    "udp-table": "UDP flows live in udp_table",
    "icmp-error": "an ICMP error quoting a connection goes to that connection's real server",
    "flow-cache": "each CPU caches the connections it forwards, following a cached one "
                  "only for flow_sync_ns, never across a new generation",
    "flow-cache-state": "SYN, FIN and RST segments never take the cache",
    "flow-cache-replaced": "a replaced connection is forgotten in every CPU's cache",
}

COUNTERS = ("tx_service", "tx_arp_reply", "tx_icmp_echo_reply", "pass_not_ipv4",
            "pass_arp_other", "pass_not_vip", "pass_vip_other_port", "pass_fragment",
            "pass_ip_options", "pass_tcp_no_conn", "pass_icmp_other", "pass_malformed",
            "drop_no_real_server", "drop_real_mac_unknown", "drop_conn_table_error",
            "pass_not_programmed", "pass_probe_reply", "conn_table_insert", "persist_hit",
            "drop_overloaded", "conn_rescheduled", "pass_arp_backup", "conn_sloppy_pickup",
            "pass_not_our_mac", "pass_arp_bad_source", "syn_table_insert", "conn_promoted",
            "udp_table_insert", "tx_icmp_error", "pass_icmp_error_no_conn")


def c(name: str) -> str:
    return f"counter:{name}"


M = Mutant
# flow_probe's blind fill while the meter has the cache off.
BLIND_FILL = ("\t\t*fill = FLOW_FILL_BLIND + home;\n"
              "\t\treturn flow_set_on(flow_home(h), cpu);\n")

MUTANTS: list[Mutant] = [
    # ---- flow_cache --------------------------------------------------------------------
    M("flow-cache-ignores-generation", "((ticks >> FLOW_STAMP_SHIFT) + cfg->flow_gen)",
      "((ticks >> FLOW_STAMP_SHIFT) + 0)", ("flow-cache",)),
    M("flow-cache-never-syncs", "if (*fe && flow_due(**fe, stamp, cfg))",
      "if (0)", ("flow-cache",)),
    M("flow-cache-follows-another-service", "if (real && serves(real, svc_bits(&ck)) &&",
      "if (real && 1 &&", ("flow-cache",)),
    M("flow-meter-counts-due-as-miss", "fm->hits += *fe != NULL;",
      "fm->hits += *fe && !flow_due(**fe, stamp, cfg);", ("flow-cache",)),
    M("flow-victim-synced-longest-ago",
      "\t\t\t\te = &fs->way[bpf_get_prandom_u32() & (FLOW_CACHE_WAYS - 1)];\n",
      "\t\t\t{\n"
      "\t\t\t\te = &fs->way[0];\n"
      "#pragma unroll\n"
      "\t\t\t\tfor (int w = 1; w < FLOW_CACHE_WAYS; w++)\n"
      "\t\t\t\t\tif (((fs->way[w] >> FLOW_STAMP_SHIFT_IN) & 0xfff) <\n"
      "\t\t\t\t\t    ((*e >> FLOW_STAMP_SHIFT_IN) & 0xfff))\n"
      "\t\t\t\t\t\te = &fs->way[w];\n"
      "\t\t\t}\n", ("flow-cache",)),
    M("flow-alt-never-probed", "\t\tif (fa)\n\t\t\t*fe = flow_find(fa, flow_want(h) | FLOW_ALT, home);\n",
      "", ("flow-cache",)),
    M("flow-alt-mark-ignored", "*fe = flow_find(fa, flow_want(h) | FLOW_ALT, home);",
      "*fe = flow_find(fa, flow_want(h), home);", ("flow-cache",)),
    M("flow-alt-never-filled", "fa = flow_set_on(flow_alt(h), bpf_get_smp_processor_id());",
      "fa = NULL;", ("flow-cache",)),
    M("probe-reply-filtered-out", "return ports && probe_port(ports->dest) && maybe_vip(iph->saddr);",
      "return 0;", ("probe-reply", c("pass_probe_reply"))),
    M("flow-home-way-from-the-low-bits", "return (h >> FLOW_HOME_FROM) & (FLOW_CACHE_WAYS - 1);",
      "return h & (FLOW_CACHE_WAYS - 1);", ("flow-cache",)),
    M("flow-victim-ignores-home", "\tif (!fs->way[home] || flow_due(fs->way[home], stamp, cfg))\n"
      "\t\treturn &fs->way[home];\n", "",
      ("flow-cache",)),
    M("flow-blind-fill-away-from-home",
      "e = &fs->way[way_no(fill - FLOW_FILL_BLIND)];",
      "e = &fs->way[bpf_get_prandom_u32() & (FLOW_CACHE_WAYS - 1)];", ("flow-cache",)),
    M("flow-meter-never-pauses", "\t\t\tfm->skip = FLOW_METER_SKIP;\n", "", ("flow-cache",)),
    M("flow-meter-pauses-for-ever", "\t\tfm->skip--;\n", "", ("flow-cache",)),
    M("flow-meter-never-fills", BLIND_FILL,
      "\t\treturn NULL;\n", ("flow-cache",)),
    M("flow-meter-reads-while-off", BLIND_FILL,
      "", ("flow-cache",)),
    M("flow-forget-first-way-only",
      "\t\tfor (int w = 0; w < FLOW_CACHE_WAYS; w++) {\n"
      "\t\t\tif (flow_holds(fs->way[w], want))",
      "\t\tfor (int w = 0; w < 1; w++) {\n"
      "\t\t\tif (flow_holds(fs->way[w], want))",
      ("flow-cache-replaced",)),
    M("flow-forget-home-set-only", "\t\t\tif (flow_holds(fa->way[w], want | FLOW_ALT))\n"
      "\t\t\t\tfa->way[w] = 0;\n", "", ("flow-cache-replaced",)),
    M("flow-cache-takes-state-changes", "if (!th || !(th->syn | th->fin | th->rst)) {",
      "if (1) {", ("flow-cache-state",)),
    M("flow-cache-replaced-not-forgotten", "\t\tflow_forget(ck, cfg);\n", "",
      ("flow-cache-replaced",)),
    M("flow-cache-ignores-real-flags",
      "(real->flags & (REAL_F_MAC_KNOWN | REAL_F_RESCHEDULE)) == REAL_F_MAC_KNOWN)",
      "0 == 0)", ("flow-cache", c("drop_real_mac_unknown"))),
    # ---- connections -------------------------------------------------------------------
    M("conn-key-ignores-sport", "ck->sport = (*th)->source;", "ck->sport = 0;",
      ("conn-5-tuple",)),
    M("conn-key-ignores-udp-sport", "ck->sport = uh->source;", "ck->sport = 0;",
      ("conn-5-tuple",)),
    M("conn-key-ignores-saddr", "ck->saddr = iph->saddr;", "ck->saddr = 0;",
      ("conn-5-tuple",)),
    M("conn-key-ignores-proto", "ck->proto = iph->protocol;", "ck->proto = IPPROTO_TCP;",
      ("conn-5-tuple",)),
    # ---- TCP states ----------------------------------------------------------------------
    M("rst-makes-fin-wait", "if (th->rst)\n\t\treturn CONN_CLOSE;",
      "if (th->rst)\n\t\treturn CONN_FIN_WAIT;", ("tcp-states",)),
    M("syn-after-established-resets-to-syn-recv",
      "return state == CONN_ESTABLISHED ? CONN_ESTABLISHED : CONN_SYN_RECV;",
      "return CONN_SYN_RECV;", ("tcp-states",)),
    M("fin-after-close-reopens-fin-wait",
      "return state == CONN_CLOSE ? CONN_CLOSE : CONN_FIN_WAIT;",
      "return CONN_FIN_WAIT;", ("tcp-states",)),
    M("ack-never-establishes", "if (th->ack && state == CONN_SYN_RECV)",
      "if (0 && th->ack && state == CONN_SYN_RECV)", ("tcp-states",)),
    M("ack-establishes-from-any-state", "if (th->ack && state == CONN_SYN_RECV)",
      "if (th->ack)", ("tcp-states",)),
    M("state-not-updated", "cv->state = new;", "cv->state = old;", ("tcp-states",)),
    M("new-conn-state-established",
      "!sc->past_syn ? CONN_SYN_RECV :",
      "!sc->past_syn ? CONN_ESTABLISHED :", ("tcp-states", "tcp-timeouts")),
    # ---- timeouts ------------------------------------------------------------------------
    M("one-timeout-for-all-states", "cfg->timeout_ns[state]",
      "cfg->timeout_ns[CONN_ESTABLISHED]", ("tcp-timeouts", "udp-timeout")),
    M("entries-never-expire",
      "if (expired(now, cv->last_seen_ns, cfg->timeout_ns[state]))\n\t\treturn 0;",
      "", ("tcp-timeouts", "udp-timeout")),
    M("expiry-twice-as-long", "return (__s64)(now - last_seen) > (__s64)timeout;",
      "return (__s64)(now - last_seen) > 2 * (__s64)timeout;",
      ("tcp-timeouts", "udp-timeout", "persist-expiry")),
    M("idle-timer-not-restarted", "cv->last_seen_ns = now;\n", "",
      ("idle-restart",)),
    M("udp-gets-tcp-state", "fresh.state = !tcp ? CONN_UDP :",
      "fresh.state = !tcp ? CONN_ESTABLISHED :", ("udp-timeout",)),
    # ---- TCP without a connection, new connections ----------------------------------------
    M("tcp-non-syn-scheduled", "if (th && !is_new_tcp(th) && !moved && ",
      "if (0 && th && !is_new_tcp(th) && !moved && ", ("tcp-no-conn-pass",)),
    M("syn-ack-is-new", "return th->syn && !th->ack && !th->rst;",
      "return th->syn && !th->rst;", ("tcp-no-conn-pass",)),
    M("no-port-reuse-from-fin-wait",
      "(state == CONN_FIN_WAIT || state == CONN_CLOSE)", "(state == CONN_CLOSE)",
      ("port-reuse",)),
    M("no-port-reuse-from-close",
      "(state == CONN_FIN_WAIT || state == CONN_CLOSE)", "(state == CONN_FIN_WAIT)",
      ("port-reuse",)),
    M("port-reuse-from-any-state",
      "(state == CONN_FIN_WAIT || state == CONN_CLOSE)", "(1)", ("port-reuse",)),
    # ---- WRR -----------------------------------------------------------------------------
    M("wrr-position-not-advanced", "wp->pos = pos + 1 >= len ? 0 : pos + 1;",
      "wp->pos = pos;", ("wrr-order",)),
    M("wrr-skips-last-slot", "wp->pos = pos + 1 >= len ? 0 : pos + 1;",
      "wp->pos = pos + 2 >= len ? 0 : pos + 1;", ("wrr-order",)),
    M("wrr-ignores-offset", "slot = svc->seq_offset + pos;", "slot = pos;",
      ("wrr-order",)),
    M("wrr-lock-removed",
      "bpf_spin_lock(&wp->lock);\n\tpos = wp->pos;\n\tif (pos >= len)\n"
      "\t\tpos = 0;\n\twp->pos = pos + 1 >= len ? 0 : pos + 1;\n"
      "\tbpf_spin_unlock(&wp->lock);",
      "pos = wp->pos;\n\tif (pos >= len)\n\t\tpos = 0;\n"
      "\twp->pos = pos + 1 >= len ? 0 : pos + 1;",
      ("wrr-lock",)),
    M("empty-cycle-picks-slot-0", "if (len == 0)\n\t\treturn PICK_NONE;", "",
      ("unschedulable", "counter:drop_no_real_server")),
    # ---- other schedulers (README "Schedulers") ---------------------------------------------
    M("sh-table-offset-ignored", "real_id = table_at(svc->table_offset + h);",
      "real_id = table_at(h);", ("sched-tables",)),
    M("mh-table-offset-ignored", "real_id = table_at(svc->table_offset + ihash);",
      "real_id = table_at(ihash);", ("sched-tables",)),
    M("wlc-ignores-weight", "sc->best_oh * w > oh * sc->best_w", "sc->best_oh > oh",
      ("sched-tables",)),
    # ---- persistence ------------------------------------------------------------------------
    M("persist-netmask-ignored", "pk->client_net = ck->saddr & svc->persist_mask;",
      "pk->client_net = ck->saddr;", ("persist-key",)),
    M("persist-key-ignores-port", "pk->port = ck->dport;", "pk->port = 0;",
      ("persist-key",)),
    M("template-not-refreshed-on-hit", "pv->last_seen_ns = now;\n\t\t\t\tcount(",
      "count(", ("persist-alive",)),
    M("template-not-kept-alive-by-connections", "if (cv->flags & CONN_F_PERSISTENT)",
      "if (0)", ("persist-alive",)),
    M("touch-template-any-server", "if (pv && pv->real_id == real_id)", "if (pv)",
      ("persist-alive",)),
    M("template-never-expires",
      "if (pv && !expired(now, pv->last_seen_ns,", "if (pv && !expired(0, 0,",
      ("persist-expiry",)),
    M("template-of-quiesced-server-followed",
      "if (real && (real->flags & REAL_F_SCHEDULABLE)) {",
      "if (real) {", ("persist-quiesced", "unschedulable")),
    M("template-not-written", "persist_table.update(pk, &fresh);", "",
      ("persist-key", "counter:persist_hit")),
    M("persist-hit-not-counted", "count(COUNTER_PERSIST_HIT);", "",
      ("counter:persist_hit",)),
    # ---- ARP ---------------------------------------------------------------------------------
    M("arp-any-address", "if (!vips.lookup(&vip))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_ARP_OTHER);",
      "", ("arp-vip-only",)),
    M("arp-answers-announcements", "if (arp->spa == vip)", "if (0)", ("arp-vip-only",)),
    M("arp-answers-replies", "arp->op != bpf_htons(ARPOP_REQUEST)", "0",
      ("arp-vip-only",)),
    M("arp-reply-wrong-target", "arp->tpa = arp->spa;", "arp->tpa = vip;",
      ("arp-vip-only",)),
    M("arp-reply-counted-as-pass", "return finish(XDP_TX, COUNTER_TX_ARP_REPLY);",
      "return finish(XDP_TX, COUNTER_PASS_ARP_OTHER);", (c("tx_arp_reply"),)),
    M("arp-other-counted-as-not-ipv4",
      "arp->op != bpf_htons(ARPOP_REQUEST))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_ARP_OTHER);",
      "arp->op != bpf_htons(ARPOP_REQUEST))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_IPV4);",
      (c("pass_arp_other"),)),
    # ---- ping ----------------------------------------------------------------------------------
    M("ping-any-address", "if (!vips.lookup(&daddr))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_VIP);",
      "", ("ping-vip-only",)),
    M("ping-icmp-echo-setting-ignored", "if (!(cfg->flags & SETTINGS_F_ICMP_ECHO) || ",
      "if (", ("ping-vip-only",)),
    M("icmp-code-ignored", " || icmp->code != 0)", ")", ("ping-vip-only",)),
    M("icmp-type-ignored", "icmp->type != ICMP_ECHO || ", "", ("ping-vip-only",)),
    M("echo-reply-bad-checksum", "sum = (__u16)~icmp->checksum + (__u16)~bpf_htons(ICMP_ECHO << 8);",
      "sum = (__u16)~icmp->checksum;", ("ping-vip-only",)),
    M("echo-reply-ttl-kept", "iph->ttl = ICMP_ECHO_REPLY_TTL;", "", ("ping-vip-only",)),
    M("echo-reply-counted-as-service", "return finish(XDP_TX, COUNTER_TX_ICMP_ECHO_REPLY);",
      "return finish(XDP_TX, COUNTER_TX_SERVICE);", (c("tx_icmp_echo_reply"),)),
    M("icmp-other-counted-as-not-vip",
      "icmp->code != 0)\n\t\treturn finish(XDP_PASS, COUNTER_PASS_ICMP_OTHER);",
      "icmp->code != 0)\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_VIP);",
      (c("pass_icmp_other"),)),
    # ---- forwarding and stats --------------------------------------------------------------
    M("source-mac-kept", "copy_mac(eth->h_source, cfg->mac);\n\treturn finish(XDP_TX, COUNTER_TX_SERVICE);",
      "return finish(XDP_TX, COUNTER_TX_SERVICE);", ("mac-rewrite",)),
    M("forward-counted-as-arp", "return finish(XDP_TX, COUNTER_TX_SERVICE);",
      "return finish(XDP_TX, COUNTER_TX_ARP_REPLY);", (c("tx_service"),)),
    M("stats-bytes-include-ethernet",
      "add_stats(real_stats.lookup(&real_id), new_conn, bpf_ntohs(iph->tot_len));",
      "add_stats(real_stats.lookup(&real_id), new_conn, bpf_ntohs(iph->tot_len) + 14);",
      ("stats",)),
    M("stats-every-packet-a-connection", "s->conns += new_conn;", "s->conns += 1;",
      ("stats",)),
    M("stats-not-kept",
      "\tadd_stats(real_stats.lookup(&real_id), new_conn, bpf_ntohs(iph->tot_len));\n", "",
      ("stats",)),
    M("conn-table-insert-not-counted-on-promotion",
      "\t\tcount(COUNTER_CONN_TABLE_INSERT);\n\t\tcount(COUNTER_CONN_PROMOTED);",
      "\t\tcount(COUNTER_CONN_PROMOTED);", (c("conn_table_insert"),)),
    M("conn-table-insert-not-counted-past-syn",
      "\t\tsyn_drop((struct conn_key *)ck, cfg);\n\t\tcount(COUNTER_CONN_TABLE_INSERT);\n\t} else {",
      "\t\tsyn_drop((struct conn_key *)ck, cfg);\n\t} else {", (c("conn_table_insert"),)),
    M("conn-promoted-not-counted",
      "\t\tcount(COUNTER_CONN_TABLE_INSERT);\n\t\tcount(COUNTER_CONN_PROMOTED);",
      "\t\tcount(COUNTER_CONN_TABLE_INSERT);", (c("conn_promoted"),)),
    M("syn-table-insert-not-counted", "\t\tif (!sc->replaces)\n\t\t\tcount(COUNTER_SYN_TABLE_INSERT);",
      "", (c("syn_table_insert"),)),
    M("syn-table-insert-counted-on-reuse", "\t\tif (!sc->replaces)\n\t\t\tcount(COUNTER_SYN_TABLE_INSERT);",
      "\t\tcount(COUNTER_SYN_TABLE_INSERT);", (c("syn_table_insert"),)),
    M("udp-table-insert-not-counted", "\t\tif (!sc->replaces)\n\t\t\tcount(COUNTER_UDP_TABLE_INSERT);",
      "", (c("udp_table_insert"),)),
    # ---- half-open and UDP tables ----------------------------------------------------
    M("syn-goes-to-conn-table",
      "\t} else if (tcp && !sc->past_syn) {\n\t\tif (syn_put((struct conn_key *)ck, &fresh, cfg))",
      "\t} else if (tcp && !sc->past_syn) {\n\t\tif (conn_table.update((struct conn_key *)ck, &fresh))",
      ("syn-table", c("syn_table_insert"))),
    M("half-open-never-promoted", "\tif (!conn_table.update(ck, &established)) {",
      "\tif (0) {", ("syn-table", c("conn_promoted"))),
    M("promotion-leaves-syn-entry",
      "\tif (!conn_table.update(ck, &established)) {\n\t\tsyn_drop(ck, cfg);",
      "\tif (!conn_table.update(ck, &established)) {", ("syn-table",)),
    M("syn-set-reuses-a-live-way", "\treturn !e->key.proto ||\n", "\treturn 1 ||\n",
      ("syn-table",)),
    M("syn-set-never-reuses-an-expired-way", "\treturn !e->key.proto ||\n\t       expired(",
      "\treturn !e->key.proto ||\n\t       0 && expired(", ("syn-table",)),
    M("syn-spill-not-looked-up", "\tif (spilled_lately(set, now_ns()))\n\t\treturn syn_spill",
      "\tif (0)\n\t\treturn syn_spill", ("syn-table",)),
    M("syn-spill-not-marked", "\t\t*spill_mark(set) = now >> SPILL_SHIFT;\n", "",
      ("syn-table",)),
    M("syn-spill-entry-not-dropped", "\telse if (spilled_lately(set, now_ns()))\n\t\tsyn_spill.delete(ck);",
      "", ("syn-table",)),
    M("half-open-not-followed", "\t\thv = syn_find(&ck, cfg);", "\t\thv = NULL;",
      ("syn-table",)),
    M("half-open-reschedule-ignored",
      "\tif (real && (real->flags & REAL_F_RESCHEDULE)) {\n\t\t*moved = 1;",
      "\tif (0) {\n\t\t*moved = 1;", ("reschedule", "syn-table")),
    M("udp-goes-to-conn-table",
      "\t} else {\n\t\tif (udp_table.update((struct conn_key *)ck, &fresh))",
      "\t} else {\n\t\tif (conn_table.update((struct conn_key *)ck, &fresh))",
      ("udp-table", c("udp_table_insert"))),
    # ---- frames not for the director -------------------------------------------------
    M("any-dest-mac-balanced",
      "\tif (programmed(cfg) && !same_mac(eth->h_dest, cfg->mac))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_OUR_MAC);",
      "", ("our-mac-only", c("pass_not_our_mac"))),
    M("mac-compare-head-only", "\treturn ((ha ^ hb) | (ta ^ tb)) == 0;",
      "\treturn (ha ^ hb) == 0;", ("our-mac-only",)),
    M("arp-to-other-host-answered",
      "\tif (!broadcast_mac(eth->h_dest) && !same_mac(eth->h_dest, cfg->mac))",
      "\tif (0)", ("our-mac-only", c("pass_not_our_mac"))),
    M("arp-group-source-answered",
      "\tif (group_or_zero_mac(eth->h_source) || group_or_zero_mac(arp->sha))",
      "\tif (0)", ("arp-bad-source", c("pass_arp_bad_source"))),
    M("arp-sender-hw-unchecked",
      "\tif (group_or_zero_mac(eth->h_source) || group_or_zero_mac(arp->sha))",
      "\tif (group_or_zero_mac(eth->h_source))", ("arp-bad-source",)),
    M("zero-mac-taken-for-a-host", "\treturn (mac[0] & 1) || (head | tail) == 0;",
      "\treturn (mac[0] & 1);", ("arp-bad-source",)),
    # ---- ICMP errors -----------------------------------------------------------------
    M("icmp-error-passed", "\tif (is_icmp_error(icmp->type))\n\t\treturn handle_icmp_error(c, eth, iph);",
      "", ("icmp-error", c("tx_icmp_error"))),
    M("icmp-error-quoted-tuple-not-reversed",
      "\tck.sport = ports->dest;\n\tck.dport = ports->source;",
      "\tck.sport = ports->source;\n\tck.dport = ports->dest;", ("icmp-error",)),
    M("icmp-error-for-expired-conn-forwarded",
      "\tif (!cv || !conn_is_live(cv, NULL, cfg, now_ns()))",
      "\tif (!cv)", ("icmp-error", c("pass_icmp_error_no_conn"))),
    M("icmp-error-no-conn-counted-as-other",
      "(inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_ICMP_ERROR_NO_CONN);",
      "(inner->protocol != IPPROTO_TCP && inner->protocol != IPPROTO_UDP))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_ICMP_OTHER);",
      (c("pass_icmp_error_no_conn"),)),
    M("icmp-error-source-mac-kept", "\tcopy_mac(eth->h_source, cfg->mac);\n\treturn finish(XDP_TX, COUNTER_TX_ICMP_ERROR);",
      "\treturn finish(XDP_TX, COUNTER_TX_ICMP_ERROR);", ("icmp-error", c("tx_icmp_error"))),
    # ---- other exits, each with its counter --------------------------------------------------
    M("not-ipv4-counted-as-malformed", "return finish(XDP_PASS, COUNTER_PASS_NOT_IPV4);",
      "return finish(XDP_PASS, COUNTER_PASS_MALFORMED);", (c("pass_not_ipv4"),)),
    M("vlan-frames-parsed-as-ipv4", "if (proto == bpf_htons(ETH_P_IP))",
      "if (proto == bpf_htons(ETH_P_IP) || proto == bpf_htons(ETH_P_8021Q))",
      (c("pass_not_ipv4"),)),
    M("not-vip-counted-as-other-port",
      "return pass_probe_reply(eth);\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_VIP);",
      "return pass_probe_reply(eth);\n\t\treturn finish(XDP_PASS, COUNTER_PASS_VIP_OTHER_PORT);",
      (c("pass_not_vip"),)),
    M("other-protocol-to-vip-counted-as-not-vip",
      "if (vips.lookup(&daddr))\n\t\t\treturn finish(XDP_PASS, COUNTER_PASS_VIP_OTHER_PORT);",
      "", (c("pass_vip_other_port"),)),
    M("vip-other-port-counted-as-not-vip",
      "if (vips.lookup(&ck.daddr))\n\t\t\treturn finish(XDP_PASS, COUNTER_PASS_VIP_OTHER_PORT);",
      "", (c("pass_vip_other_port"),)),
    M("fragments-forwarded", "if (is_fragment(iph))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_FRAGMENT);",
      "", (c("pass_fragment"),)),
    M("ip-options-forwarded", "if (iph->ihl != 5)\n\t\treturn finish(XDP_PASS, COUNTER_PASS_IP_OPTIONS);",
      "", (c("pass_ip_options"),)),
    M("tcp-no-conn-counted-as-not-vip", "return finish(XDP_PASS, COUNTER_PASS_TCP_NO_CONN);",
      "return finish(XDP_PASS, COUNTER_PASS_NOT_VIP);", (c("pass_tcp_no_conn"),)),
    M("tcp-doff-unchecked", "if (!*th || (*th)->doff < 5)", "if (!*th)", (c("pass_malformed"),)),
    M("ip-ihl-unchecked", "if (!iph || iph->version != 4 || iph->ihl < 5)",
      "if (!iph || iph->version != 4)", (c("pass_malformed"),)),
    M("no-real-server-passed",
      "if (picked < 0)\n\t\treturn finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);",
      "if (picked < 0)\n\t\treturn finish(XDP_PASS, COUNTER_DROP_NO_REAL_SERVER);",
      (c("drop_no_real_server"),)),
    M("overloaded-counted-as-no-real-server",
      "return finish(XDP_DROP, COUNTER_DROP_OVERLOADED);",
      "return finish(XDP_DROP, COUNTER_DROP_NO_REAL_SERVER);", (c("drop_overloaded"),)),
    M("mac-unknown-established-forwarded",
      "return finish(XDP_DROP, COUNTER_DROP_REAL_MAC_UNKNOWN);\n\t\t\t}",
      "return finish(XDP_PASS, COUNTER_PASS_TCP_NO_CONN);\n\t\t\t}",
      (c("drop_real_mac_unknown"),)),
    M("mac-unknown-check-skipped-on-established",
      "} else if (real && (real->flags & REAL_F_MAC_KNOWN)) {",
      "} else if (real) {", (c("drop_real_mac_unknown"), "unschedulable")),
    # The error itself cannot be provoked through test-run (an LRU update makes room);
    # the mutant checks that its test is the right way round.
    M("conn-table-update-check-inverted",
      "if (syn_put((struct conn_key *)ck, &fresh, cfg))",
      "if (!syn_put((struct conn_key *)ck, &fresh, cfg))", (c("drop_conn_table_error"),)),
    M("not-programmed-ignored-for-arp",
      "if (!programmed(cfg))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);\n\tif (!vips.lookup(&vip))",
      "if (!vips.lookup(&vip))", (c("pass_not_programmed"),)),
    M("programmed-reads-half-the-mac", "return (head | tail) != 0;", "return 1;",
      (c("pass_not_programmed"),)),
    M("not-programmed-ignored-for-services",
      "/* No live connection to follow: from here on the frame needs the services. */\n"
      "\tif (!programmed(cfg))\n\t\treturn finish(XDP_PASS, COUNTER_PASS_NOT_PROGRAMMED);",
      "", (c("pass_not_programmed"),)),
    # ---- health: reschedule and probe replies ----------------------------------------------
    M("reschedule-flag-ignored",
      "\t\t\tif (real && (real->flags & REAL_F_RESCHEDULE)) {\n\t\t\t\t/* Its server",
      "\t\t\tif (0) {\n\t\t\t\t/* Its server", ("reschedule", c("conn_rescheduled"))),
    M("rescheduled-not-counted", "if (sc->moved)\n\t\tcount(COUNTER_CONN_RESCHEDULED);",
      "if (0)\n\t\tcount(COUNTER_CONN_RESCHEDULED);",
      (c("conn_rescheduled"),)),
    M("probe-reply-reaches-kernel", "__builtin_memset(eth->h_dest, 0, ETH_ALEN);", "",
      ("probe-reply", c("pass_probe_reply"))),
    M("probe-reply-any-port", "return dport >= PROBE_PORT_MIN && dport <= PROBE_PORT_MAX;",
      "return 1;", ("probe-reply",)),
    M("probe-reply-from-anyone", "return probe_port(ck->dport) && vips.lookup(&saddr);",
      "return probe_port(ck->dport);", ("probe-reply",)),
    M("sloppy-pickup-not-counted",
      "else if (tcp && sc->past_syn)\n\t\tcount(COUNTER_CONN_SLOPPY_PICKUP);",
      "else if (0)\n\t\tcount(COUNTER_CONN_SLOPPY_PICKUP);", (c("conn_sloppy_pickup"),)),
    M("arp-answered-while-backup",
      "if (cfg->flags & SETTINGS_F_ARP_BACKUP)\n\t\treturn finish(XDP_PASS, COUNTER_PASS_ARP_BACKUP);",
      "", (c("pass_arp_backup"),)),
    M("vip-filter-says-never", "return bits && ((*bits >> (h % 64)) & 1);", "return 0;",
      ("vip-prefilter",)),
    # every exit counted
    M("finish-counts-nothing", "static __always_inline int finish(int action, __u32 counter)\n{\n\tcount(counter);",
      "static __always_inline int finish(int action, __u32 counter)\n{",
      ("exit-counters",)),
]


def bpf_dir() -> Path:
    return Path(__file__).resolve().parent.parent / "bpf"


def check_all(directory: Path | None = None) -> list[str]:
    """Every mutant's problem with the current sources (empty: all apply)."""
    directory = directory or bpf_dir()
    problems = []
    for m in MUTANTS:
        try:
            m.apply((directory / m.file).read_text())
        except MutantDoesNotApply as e:
            problems.append(str(e))
    return problems
