/* Every size and fixed number of the data plane. Each can be overridden at build time
 * with -DNAME=value; lb/abi.py reads the defaults from here. */
#ifndef DR_LB_CONSTS_H
#define DR_LB_CONSTS_H

#ifndef MAX_SERVICES
#define MAX_SERVICES 256
#endif

#ifndef MAX_REALS
#define MAX_REALS 4096
#endif

/* Slots of wrr_seq shared by all services; a service needs sum(weights)/gcd. */
#ifndef WRR_SEQ_CAPACITY
#define WRR_SEQ_CAPACITY 1048576
#endif

/* Default; the control plane passes [director] conn_table_size. */
#ifndef CONN_TABLE_SIZE
#define CONN_TABLE_SIZE 1000000
#endif

/* Extra conn_table slots per possible CPU (used by lb/dataplane.py when it sizes the
 * table): the LRU keeps free slots on per-CPU lists and starts evicting a little before
 * it is full; measured: 64 of 1,000,000 lost on 2 CPUs without headroom. */
#define LRU_HEADROOM_PER_CPU 256

#ifndef PERSIST_TABLE_SIZE
#define PERSIST_TABLE_SIZE 262144
#endif

/* IPVS's fixed timeouts for the states `ipvsadm --set` does not cover. */
#define SYN_RECV_TIMEOUT_S 60
#define CLOSE_TIMEOUT_S 10

#define ICMP_ECHO_REPLY_TTL 64

/* The source ports of the director's DR-path probes (lb/director/probe.py), above Linux's
 * default ephemeral range (32768-60999). A TCP segment from a VIP to one of these ports is
 * a real server's answer to a probe: the program hides it from the director's kernel. */
#define PROBE_PORT_MIN 61000
#define PROBE_PORT_MAX 65535

#endif
