# What only the three Consul servers (consul1, consul2, consul3) add to
# consul.hcl, in docker-compose.consul.yml and in the local topology.
server           = true
bootstrap_expect = 3

# A stopped server stays a member of the Raft configuration (it is expected
# back), so the other two keep a quorum of the three. Leaving on SIGTERM
# would shrink the cluster instead, which is what an operator removing a
# server does on purpose (consul leave). This is Consul's default for
# servers, spelled out because the agents below do the opposite.
leave_on_terminate = false

# The web UI on each server's HTTP port: http://localhost:8500/ui
ui_config {
  enabled = true
}
