//! The Consul agent as a backend of the registrar core
//! ([`crate::registrar`]): what registering, heartbeating and removing an
//! instance mean on one agent. Ordering, retries, restores and undo are the
//! core's.
//!
//! There is no lease: each instance has its own TTL check, passed one by one
//! ([`Backend::renew`]), and an instance the agent forgot shows as a check it
//! no longer knows ([`Renewal::Forgotten`]). The registrar's owner token rides
//! in the service's `Meta` under
//! [`OWNER_METADATA_KEY`](crate::model::OWNER_METADATA_KEY).
//!
//! Ownership is checked on the one agent we talk to, with a read before each
//! write, so it is best effort:
//! - The same id registered through two different agents is two records
//!   (Consul's catalog holds one id per node), both live; neither registrar
//!   can see the other's.
//! - Two registrations of one id racing on one agent may both find the id
//!   free (or their own) before either writes; the second write then
//!   replaces the first. The loser notices at its next check of its records
//!   (about once per TTL, [`Backend::verify`]) and gives way; meanwhile its
//!   heartbeats pass the winner's check, which has the same check id.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use super::api::{AgentRecord, Api, BACKEND, Heartbeat};
use crate::error::{Error, Result};
use crate::registrar::{Backend, Found, Record, Renewal};

/// How many heartbeats of one renewal round run at once.
const HEARTBEAT_CONCURRENCY: usize = 16;

/// One Consul agent, for one registrar.
#[derive(Debug)]
pub(super) struct Agent {
    api: Api,
    /// The TTL of each instance's check.
    ttl: Duration,
}

impl Agent {
    /// The agent behind `api`, registering instances with a check of `ttl`.
    pub(super) fn new(api: Api, ttl: Duration) -> Self {
        Agent { api, ttl }
    }
}

#[async_trait]
impl Backend for Agent {
    /// Nothing to hold: the agent keeps each instance alive by its check.
    type Lease = ();

    const NAME: &'static str = BACKEND;

    /// Nothing to open: `connect` already saw the agent answer, and every
    /// later call reports an unreachable agent by itself.
    async fn open(&self) -> Result<()> {
        Ok(())
    }

    /// Reads what the agent has under the id, then registers the record
    /// unless the id belongs to another service (Consul ids are unique per
    /// agent across services: [`Error::Rejected`]) or carries another
    /// registrar's token while its TTL check lives
    /// ([`Error::AlreadyRegistered`]). A record with our token, with none
    /// (another tool's, or an older version's), or whose check is critical
    /// (its registrar crashed or is cut off: the record has expired, though
    /// the agent keeps it until `DeregisterCriticalServiceAfter`) is
    /// replaced.
    async fn put(&self, _lease: &(), record: &Record) -> Result<()> {
        let instance = &record.instance;
        if let Some(existing) = self.api.agent_service("register", &instance.id).await? {
            if existing.service != instance.service {
                return Err(Error::Rejected {
                    backend: BACKEND,
                    operation: "register",
                    reason: format!(
                        "the agent at {} already has service id {:?} registered for service {:?}, \
                         not {:?}; Consul service ids are unique per agent across all services, so give \
                         this instance another id (or deregister the other one first)",
                        self.api.addr(),
                        instance.id,
                        existing.service,
                        instance.service
                    ),
                });
            }
            let other = existing.owner.filter(|o| **o != *record.owner);
            if let (Some(holder), true) = (&other, existing.expired) {
                tracing::info!(backend = BACKEND, service = %instance.service, id = %instance.id,
                    %holder, "replacing another registrar's record whose check has expired");
            }
            if let Some(holder) = other.filter(|_| !existing.expired) {
                return Err(Error::AlreadyRegistered {
                    backend: BACKEND,
                    service: instance.service.clone(),
                    id: instance.id.clone(),
                    holder,
                });
            }
        }
        self.api.register(instance, &record.owner, self.ttl).await
    }

    /// Deregisters the id if the agent's record of it is ours (our token,
    /// our service); anything else under the id is left alone.
    async fn delete(&self, _lease: &(), record: &Record) -> Result<()> {
        let instance = &record.instance;
        match self.api.agent_service("deregister", &instance.id).await? {
            Some(existing) if is_ours(&existing, record) => self.api.deregister(&instance.id).await,
            Some(existing) => {
                tracing::debug!(backend = BACKEND, service = %instance.service, id = %instance.id,
                    holder = existing.owner.as_deref().unwrap_or("none"),
                    "not deregistering: the agent's record of this id is no longer ours");
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// Nothing to call: once the core stops heartbeating it, the check goes
    /// critical after the TTL (the instance leaves the passing set) and the
    /// agent reaps it after `DeregisterCriticalServiceAfter`.
    async fn abandon(&self, _lease: &(), _record: &Record) -> Result<()> {
        Ok(())
    }

    /// Passes every record's TTL check, [`HEARTBEAT_CONCURRENCY`] at a time.
    /// Checks the agent no longer knows are reported
    /// [`Renewal::Forgotten`]; other failures are logged and left to the
    /// next round, unless every heartbeat failed: then the agent is down or
    /// unreachable, and the round fails.
    async fn renew(&self, _lease: &(), records: &[Record]) -> Result<Renewal> {
        let ids: Vec<(usize, String)> = records
            .iter()
            .map(|record| record.instance.id.clone())
            .enumerate()
            .collect();
        let mut beats: Vec<(usize, Heartbeat)> = futures::stream::iter(ids)
            .map(|(index, id)| {
                let api = self.api.clone();
                async move { (index, api.pass(&id).await) }
            })
            .buffer_unordered(HEARTBEAT_CONCURRENCY)
            .collect()
            .await;
        beats.sort_by_key(|(index, _)| *index);
        let mut forgotten = Vec::new();
        let mut failed = Vec::new();
        for (index, beat) in beats {
            match beat {
                Heartbeat::Passed => {}
                Heartbeat::Forgotten(reason) => {
                    tracing::debug!(backend = BACKEND, id = %records[index].instance.id, %reason,
                        "the agent does not know this instance's check");
                    forgotten.push(index);
                }
                Heartbeat::Failed(error) => failed.push((index, error)),
            }
        }
        if failed.len() == records.len() {
            // Every heartbeat failed: one error stands for the round.
            if let Some((_, error)) = failed.pop() {
                return Err(error);
            }
        }
        for (index, error) in &failed {
            tracing::warn!(backend = BACKEND, service = %records[*index].instance.service,
                id = %records[*index].instance.id, %error,
                "heartbeat failed while others passed; retrying next round (the check goes critical if it keeps failing for a TTL)");
        }
        Ok(if forgotten.is_empty() {
            Renewal::Alive
        } else {
            Renewal::Forgotten(forgotten)
        })
    }

    /// One `GET /v1/agent/services` for all records: ours if the agent has
    /// the id with our token; held if another registrar's token is there
    /// (a registration that raced ours, or one made after ours expired);
    /// missing if the id is gone; changed otherwise (no token, or another
    /// service under the id), so the core puts ours back. Heartbeats cannot
    /// tell these apart: they pass the id's check whoever wrote it.
    async fn verify(&self, _lease: &(), records: &[Record]) -> Result<Vec<Found>> {
        let services = self.api.agent_services().await?;
        Ok(records
            .iter()
            .map(|record| match services.get(&record.instance.id) {
                None => Found::Missing,
                Some(existing) if is_ours(existing, record) => Found::Ours,
                Some(AgentRecord {
                    owner: Some(holder),
                    ..
                }) if **holder != *record.owner => Found::Held {
                    holder: holder.clone(),
                },
                Some(_) => Found::Changed,
            })
            .collect())
    }
}

/// Whether the agent's record `existing` is `record`'s: our token, our
/// service.
fn is_ours(existing: &AgentRecord, record: &Record) -> bool {
    existing.service == record.instance.service && existing.owner.as_deref() == Some(&*record.owner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Instance, OWNER_METADATA_KEY};

    #[test]
    fn only_our_token_on_our_service_is_ours() {
        let record = Record::new(Instance::new("lorem", "a", "127.0.0.1", 1), "pid1-a".into());
        let agent_record = |service: &str, owner: Option<&str>| AgentRecord {
            service: service.to_owned(),
            owner: owner.map(str::to_owned),
            expired: false,
        };
        assert!(is_ours(&agent_record("lorem", Some("pid1-a")), &record));
        assert!(!is_ours(&agent_record("lorem", Some("pid2-b")), &record));
        assert!(!is_ours(&agent_record("lorem", None), &record));
        assert!(!is_ours(&agent_record("ipsum", Some("pid1-a")), &record));
        assert_eq!(OWNER_METADATA_KEY, "registry-owner");
    }
}
