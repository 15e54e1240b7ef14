# Settings shared by every Consul agent of docker-compose.consul.yml (the
# three servers and the three client agents) and of the local topology
# (deploy/local.sh consul, testkit::ConsulCluster, which loads this very
# file). Addresses, ports, node names, the data directory and what to join
# are given on each agent's command line, since they differ; server.hcl
# adds what only the servers have.
#
# Unsecured, as a quick start: no ACLs, no gossip encryption, no TLS. A
# production cluster turns all three on (acl { enabled = true ... },
# encrypt = "<consul keygen>", tls { defaults { ... } }); the lorem
# processes then need CONSUL_HTTP_TOKEN, which they send as X-Consul-Token.
log_level            = "warn"
disable_update_check = true

# Every agent is given the servers to join (-retry-join); retry every
# second rather than every 30 s, so that agents started in any order (or
# before the servers' names resolve) form the cluster within seconds.
retry_interval = "1s"

# Only the HTTP API is used: no DNS or gRPC listeners (on 127.0.0.1 every
# agent would otherwise need ports of its own for them too).
ports {
  dns      = -1
  grpc     = -1
  grpc_tls = -1
}

# Raft timing for production: 1 is HashiCorp's recommendation for
# production servers (the default, 5, is meant for small development
# machines): a lost leader is replaced within a few seconds, not 10 or more.
performance {
  raft_multiplier = 1
}
