"""dr-lb: an LVS-DR load balancer whose data plane runs in XDP."""
