"""Prometheus' /metrics for a running `up` ([metrics] listen in the config).

One custom collector reads the live data at each scrape, nothing is counted twice in
Python: the data plane's per-CPU counters and stats maps, the Monitor's cached connection
counts (a scrape never walks the connection table), the running layout for weights.

- node_exporter's IPVS collector names, so that IPVS dashboards work unchanged:
  node_ipvs_connections_total, node_ipvs_incoming_packets_total and
  node_ipvs_incoming_bytes_total (counters without labels, summed over every service the
  instance has had), node_ipvs_backend_connections_active/_inactive and
  node_ipvs_backend_weight (gauges labelled local_address, local_port, remote_address,
  remote_port, proto "TCP"/"UDP" and local_mark, always empty: no fwmark services).
  The outgoing_* series do not exist in DR (replies bypass the director) and are left out.
- dr-lb's own: drlb_packets_total{reason} (every exit of the XDP program),
  drlb_conn_table_{entries,capacity} gauges, drlb_conn_table_{inserts,evictions}_total,
  drlb_persistence_hits_total, drlb_xdp_mode{interface,mode} 1, drlb_reloads_total and
  drlb_reload_errors_total, drlb_conn_counts_age_seconds, and drlb_backend_health (the
  backend labels plus state="up"|"down"|"unchecked": 1 for the current state, 0 for the
  others, Prometheus' usual way to expose an enum; alert on
  drlb_backend_health{state="down"} == 1).

Counters never go back while `up` runs: `dr-lb zero` resets what `status` shows, and the
data plane keeps what it zeroed (Dataplane.zeroed), which is added back here. A restart
(`up`, `up --replace`) starts them from zero, which Prometheus reads as a counter reset.
"""
from __future__ import annotations

import socket
import threading
from wsgiref.simple_server import make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

from lb.director.health import DOWN, UNCHECKED, UP
from lb.director.layout import real_key
from lb.errors import UserError

BACKEND_LABELS = ["local_address", "local_port", "remote_address", "remote_port", "proto",
                  "local_mark"]
HEALTH_STATES = (UP, DOWN, UNCHECKED)
# Counters that count an event, not a packet's exit (bpf/dr_lb_abi.h marks them "event:");
# each has a series of its own below.
EVENTS = {"conn_table_insert", "persist_hit", "conn_rescheduled", "conn_sloppy_pickup",
          "syn_table_insert", "conn_promoted", "udp_table_insert"}


class Collector:
    def __init__(self) -> None:
        self.director = None
        self.reloads: dict = {}
        self._evictions = 0

    def describe(self):
        return []   # collect() reads live maps: don't let the registry call it at start

    def collect(self):
        d = self.director
        if d is None:
            return
        with d.lock:
            layout, config = d.layout, d.config
            svc_ids = sorted(set(d.ids.services.values()))
        dp = d.dp
        counts, age = d.monitor.last_counts()   # never a table walk here

        totals = [0, 0, 0]
        for i in svc_ids:
            s, z = dp.service_stats(i), dp.zeroed_stats("svc_stats", i)
            totals[0] += s.conns + z.conns
            totals[1] += s.packets + z.packets
            totals[2] += s.bytes + z.bytes
        for name, help_, value in (
                ("node_ipvs_connections_total", "The total number of connections made.",
                 totals[0]),
                ("node_ipvs_incoming_packets_total", "The total number of incoming packets.",
                 totals[1]),
                ("node_ipvs_incoming_bytes_total", "The total amount of incoming data.",
                 totals[2])):
            yield CounterMetricFamily(name.removesuffix("_total"), help_, value=value)

        active = GaugeMetricFamily("node_ipvs_backend_connections_active",
                                   "The current active connections by local and remote "
                                   "address.", labels=BACKEND_LABELS)
        inactive = GaugeMetricFamily("node_ipvs_backend_connections_inactive",
                                     "The current inactive connections by local and remote "
                                     "address.", labels=BACKEND_LABELS)
        weight = GaugeMetricFamily("node_ipvs_backend_weight",
                                   "The current backend weight by local and remote address.",
                                   labels=BACKEND_LABELS)
        health_states = d.health.states() if d.health else {}
        health = GaugeMetricFamily("drlb_backend_health", "Health check state of a real "
                                   "server: 1 for its current state (up, down or unchecked), "
                                   "0 for the others.", labels=BACKEND_LABELS + ["state"])
        for s in layout.services:
            svc = s.service
            for r in s.reals + ((s.sorry,) if s.sorry else ()):
                labels = [svc.vip, str(svc.port), r.server.address, str(r.server.port),
                          svc.protocol.upper(), ""]
                a, i = counts.per_real.get(r.real_id, (0, 0))
                active.add_metric(labels, a)
                inactive.add_metric(labels, i)
                weight.add_metric(labels, r.server.effective_weight)
                if r is s.sorry:    # keepalived's sorry server: in IPVS, not checked
                    continue
                now = health_states.get(real_key(svc, r.server.address), UNCHECKED)
                for state in HEALTH_STATES:
                    health.add_metric(labels + [state], 1 if state == now else 0)
        yield active
        yield inactive
        yield weight
        yield health

        counters = dp.counters()
        packets = CounterMetricFamily("drlb_packets", "Packets seen by the XDP program, by "
                                      "what it did with them and why (as dr-lb status "
                                      "shows).", labels=["reason"])
        for name, value in counters.items():
            if name not in EVENTS:
                packets.add_metric([name], value)
        yield packets
        inserts = counters["conn_table_insert"]
        # Nothing deletes entries but the LRU: every insert not in the table was evicted
        # (entries kept from before this start are not inserts of this run).
        # Inserts as read just before that count, so that a stale count can't inflate it.
        self._evictions = max(self._evictions, counts.inserts + counts.kept - counts.entries)
        yield CounterMetricFamily("drlb_conn_table_inserts", "New keys stored in the "
                                  "connection table.", value=inserts)
        yield CounterMetricFamily("drlb_conn_table_evictions", "Connection table entries "
                                  "evicted by the LRU to make room.", value=self._evictions)
        yield CounterMetricFamily("drlb_persistence_hits", "New connections placed by a "
                                  "persistence template.", value=counters["persist_hit"])
        yield CounterMetricFamily("drlb_conn_rescheduled", "Connections of a failed real "
                                  "server (on_failure = \"reschedule\") moved to another.",
                                  value=counters.get("conn_rescheduled", 0))
        yield CounterMetricFamily("drlb_conn_sloppy_pickups", "TCP connections picked up "
                                  "mid-stream (sloppy = true: ECMP moved them here, or "
                                  "they were evicted).",
                                  value=counters.get("conn_sloppy_pickup", 0))
        yield CounterMetricFamily("drlb_syn_table_inserts", "Half-open TCP connections "
                                  "(a SYN to a service) stored in syn_table.",
                                  value=counters["syn_table_insert"])
        yield CounterMetricFamily("drlb_conn_promoted", "Half-open connections the "
                                  "client's next packet moved to the connection table.",
                                  value=counters["conn_promoted"])
        yield CounterMetricFamily("drlb_udp_table_inserts", "New UDP flows stored in "
                                  "udp_table.", value=counters["udp_table_insert"])
        yield GaugeMetricFamily("drlb_syn_table_entries", "Entries in syn_table (half-open "
                                "TCP connections, expired ones included), as of the last "
                                "count.", value=counts.half_open)
        yield GaugeMetricFamily("drlb_udp_table_entries", "Entries in udp_table (expired "
                                "ones included), as of the last count.", value=counts.udp)
        yield GaugeMetricFamily("drlb_conn_table_entries", "Entries in the connection table "
                                "(expired ones included), as of the last count.",
                                value=counts.entries)
        yield GaugeMetricFamily("drlb_conn_table_capacity", "Connections the table holds "
                                "([director] conn_table_size).",
                                value=config.director.conn_table_size)
        yield GaugeMetricFamily("drlb_conn_counts_age_seconds", "Age of the connection "
                                "counts (counted in the background on large tables).",
                                value=round(age, 3))
        mode = GaugeMetricFamily("drlb_xdp_mode", "The XDP attach mode in use (always 1).",
                                 labels=["interface", "mode"])
        mode.add_metric([d.interface.name, d.xdp_mode], 1)
        yield mode
        yield CounterMetricFamily("drlb_reloads", "Config reloads applied (SIGHUP, dr-lb "
                                  "reload and the editing commands are not counted here).",
                                  value=self.reloads.get("reloads", 0))
        yield CounterMetricFamily("drlb_reload_errors", "Config reloads refused or failed.",
                                  value=self.reloads.get("errors", 0))


class MetricsServer:
    def __init__(self, httpd, collector: Collector):
        self.httpd = httpd
        self.collector = collector
        self.thread = threading.Thread(target=httpd.serve_forever, daemon=True,
                                       name="dr-lb-metrics")
        self.thread.start()

    def bind(self, director, reloads: dict) -> None:
        self.collector.reloads = reloads
        self.collector.director = director

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve(listen: tuple[str, int], must: bool = True) -> MetricsServer | None:
    """Listen on (host, port) for /metrics. A port in use: UserError (one line) with
    `must`, otherwise a one-line warning and no metrics."""
    host, port = listen
    registry = CollectorRegistry(auto_describe=False)
    collector = Collector()
    registry.register(collector)

    class Server(ThreadingWSGIServer):
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        daemon_threads = True

    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        httpd = make_server(host or "0.0.0.0", port, make_wsgi_app(registry), Server,
                            handler_class=_SilentHandler)
    except OSError as e:
        message = f"[metrics] listen = \"{shown}\": cannot listen there ({e.strerror})"
        if must:
            raise UserError(message + "; choose another port, or stop what uses it")
        print(f"dr-lb: warning: {message}; serving no metrics", flush=True)
        return None
    return MetricsServer(httpd, collector)
