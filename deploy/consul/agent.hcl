# What the three client agents (agent-server1, agent-server2, agent-client:
# one beside each lorem process) add to consul.hcl, in
# docker-compose.consul.yml and in the local topology.
#
# An agent that is stopped leaves the cluster (Consul's default for client
# agents, spelled out): its node and the instances registered through it are
# removed from the catalog at once, so clients stop being sent to a server
# whose agent is gone, rather than waiting for the failure detector. Its
# registrations stay in its data directory: when it comes back they are
# restored, and the lorem server's next heartbeat (or its re-registration,
# if the data was lost) makes its instance passing again.
leave_on_terminate = true
