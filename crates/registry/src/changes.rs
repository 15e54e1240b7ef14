//! Watches that carry changes: a shared [`Snapshot`] of a service, and a
//! [`ChangeStream`] of [`WatchEvent`]s (what changed, the outages, the full
//! state after each).
//!
//! # Why
//!
//! A service of 100,000 instances changes one instance at a time. A watch
//! that hands every consumer a rebuilt list costs O(N) per change in the
//! backend and again in every consumer (the balancer, `sdctl watch`, the
//! tower adapter), and snapshots pile up under churn. Here:
//!
//! - the backends keep the live set in a persistent ordered map
//!   ([`imbl::OrdMap`]): applying one etcd or ZooKeeper event is
//!   O(log N), and handing the whole set to a consumer is an O(1) clone
//!   ([`Snapshot`]) that shares its nodes with the backend's copy;
//! - the consumer gets the [`Change`]s since the snapshot it saw last,
//!   computed from the two maps by a diff that skips the nodes they share
//!   (O(k log N) for k changes), so it can do O(1) work per change;
//! - nothing is queued: the sending side keeps only the newest state and
//!   what the consumer saw last (both shared maps), so a slow consumer gets
//!   the latest state with the changes coalesced, never a backlog.
//!
//! The old [`WatchStream`] of full lists is derived from
//! the same events ([`snapshots`]); consumers that want lists still have
//! them, at O(N) per item.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::Stream;
use futures::stream::BoxStream;
use imbl::OrdMap;
use imbl::ordmap::DiffItem;

use crate::diff::Change;
use crate::error::Error;
use crate::model::Instance;
use crate::traits::WatchStream;

/// The live set as the backends keep it: ids and instances behind `Arc`s,
/// so that the path a change copies (a few nodes of 16 entries) costs
/// reference counts, not string and instance clones, and a consumer such
/// as the balancer can hold the very instances the snapshot holds.
pub(crate) type InstanceMap = OrdMap<Arc<str>, Arc<Instance>>;

/// The live instances of one service at one moment, by id.
///
/// Cloning is O(1) (the map is persistent and shared); lookups by id are
/// O(log N); iteration is in id order. The instances are shared too
/// ([`iter_shared`](Self::iter_shared)): a consumer that keeps them keeps
/// no copy.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    map: InstanceMap,
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("instances", &self.map.len())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    pub(crate) fn from_map(map: InstanceMap) -> Self {
        Snapshot { map }
    }

    /// How many live instances there are.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True when no instance is live.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The instance with this id, if it is live.
    pub fn get(&self, id: &str) -> Option<&Instance> {
        self.map.get(id).map(|instance| &**instance)
    }

    /// The instance with this id, if it is live, shared with the snapshot.
    pub fn get_shared(&self, id: &str) -> Option<&Arc<Instance>> {
        self.map.get(id)
    }

    /// The instances in id order.
    pub fn iter(&self) -> impl Iterator<Item = &Instance> + '_ {
        self.map.values().map(|instance| &**instance)
    }

    /// The instances in id order, shared with the snapshot: keeping them
    /// costs a reference count each, not a copy.
    pub fn iter_shared(&self) -> impl Iterator<Item = &Arc<Instance>> + '_ {
        self.map.values()
    }

    /// The instances in id order, as a list: O(N), for consumers that want
    /// one.
    pub fn to_vec(&self) -> Vec<Instance> {
        self.iter().cloned().collect()
    }

    /// The changes from `before` to `self`, in id order. Parts the two
    /// snapshots share are skipped, so that two snapshots a few changes
    /// apart are compared in about O(changes x log N).
    pub fn changes_since(&self, before: &Snapshot) -> Vec<Change> {
        before
            .map
            .diff(&self.map)
            .filter_map(|item| match item {
                DiffItem::Add(_, new) => Some(Change::Added(Instance::clone(new))),
                DiffItem::Remove(_, old) => Some(Change::Removed(Instance::clone(old))),
                DiffItem::Update { old, new } if old.1 != new.1 => {
                    Some(Change::Changed(Instance::clone(new.1)))
                }
                DiffItem::Update { .. } => None,
            })
            .collect()
    }
}

impl FromIterator<Instance> for Snapshot {
    /// Keyed by id; of two instances with one id, the last wins.
    fn from_iter<T: IntoIterator<Item = Instance>>(iter: T) -> Self {
        Snapshot {
            map: iter
                .into_iter()
                .map(|i| (Arc::from(i.id.as_str()), Arc::new(i)))
                .collect(),
        }
    }
}

/// One item of a [`ChangeStream`].
///
/// The error contract is that of [`WatchStream`], in
/// events: one [`Outage`](Self::Outage) when an outage starts, and the
/// next [`Synced`](Self::Synced) (always sent, even if nothing changed)
/// ends it.
#[derive(Debug)]
pub enum WatchEvent {
    /// The full state: the first event of a stream, and the first after an
    /// outage (a resync). A consumer replaces what it had.
    Synced(Snapshot),
    /// Instances were added, removed or changed since the previous event
    /// (several changes may be coalesced into one event when the consumer
    /// is slower than the registry); `snapshot` is the state after them.
    Changed {
        /// What changed, in id order; never empty.
        changes: Vec<Change>,
        /// The full state after the changes (an O(1) clone).
        snapshot: Snapshot,
    },
    /// The registry cannot be read: the set may be stale from now on. The
    /// watch retries behind it; the next [`Synced`](Self::Synced) ends the
    /// outage. For a service name that can never be watched
    /// ([`Error::InvalidInstance`]) this is the last event of the stream.
    Outage(Error),
}

/// A stream of [`WatchEvent`]s for one service: see
/// [`Watcher::watch_changes`](crate::Watcher::watch_changes). It ends only
/// when dropped (or after one `Outage` for an invalid service name).
pub type ChangeStream = BoxStream<'static, WatchEvent>;

/// The full lists of a [`WatchStream`], from a change
/// stream: each `Synced` or `Changed` becomes `Ok(list)` (O(N)), each
/// `Outage` an `Err`.
pub fn snapshots(changes: ChangeStream) -> WatchStream {
    use futures::StreamExt;
    Box::pin(changes.map(|event| match event {
        WatchEvent::Synced(snapshot) | WatchEvent::Changed { snapshot, .. } => {
            Ok(snapshot.to_vec())
        }
        WatchEvent::Outage(error) => Err(error),
    }))
}

/// A change stream from a stream of full lists: for watchers that only
/// implement [`Watcher::watch`](crate::Watcher::watch) (the provided
/// [`watch_changes`](crate::Watcher::watch_changes)). Each list costs
/// O(N) to key, and the diff O(N): use a backend's own change stream where
/// there is one.
pub fn changes_from_snapshots(lists: WatchStream) -> ChangeStream {
    Box::pin(FromLists {
        lists,
        last: Snapshot::default(),
        resync: true,
    })
}

struct FromLists {
    lists: WatchStream,
    last: Snapshot,
    resync: bool,
}

impl Stream for FromLists {
    type Item = WatchEvent;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<WatchEvent>> {
        loop {
            let item = match self.lists.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => item,
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            };
            match item {
                Err(error) => {
                    self.resync = true;
                    return Poll::Ready(Some(WatchEvent::Outage(error)));
                }
                Ok(list) => {
                    let snapshot: Snapshot = list.into_iter().collect();
                    let before = std::mem::replace(&mut self.last, snapshot.clone());
                    if std::mem::take(&mut self.resync) {
                        return Poll::Ready(Some(WatchEvent::Synced(snapshot)));
                    }
                    let changes = snapshot.changes_since(&before);
                    if !changes.is_empty() {
                        return Poll::Ready(Some(WatchEvent::Changed { changes, snapshot }));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lorem(id: &str, port: u16) -> Instance {
        Instance::new("lorem", id, "127.0.0.1", port)
    }

    #[test]
    fn changes_since_names_what_moved_between_two_shared_snapshots() {
        let mut map = OrdMap::new();
        for i in 0..10_000u16 {
            let id = format!("i{i:05}");
            map.insert(Arc::from(id.as_str()), Arc::new(lorem(&id, i)));
        }
        let before = Snapshot::from_map(map.clone());
        map.remove("i00007");
        map.insert(Arc::from("i00008"), Arc::new(lorem("i00008", 1)));
        map.insert(Arc::from("i00009"), Arc::new(lorem("i00009", 9)));
        map.insert(Arc::from("x"), Arc::new(lorem("x", 2)));
        let after = Snapshot::from_map(map);
        let lines: Vec<String> = after
            .changes_since(&before)
            .iter()
            .map(Change::line)
            .collect();
        assert_eq!(
            lines,
            [
                "removed lorem/i00007 127.0.0.1:7",
                "changed lorem/i00008 127.0.0.1:1",
                "added lorem/x 127.0.0.1:2",
            ]
        );
        assert!(after.changes_since(&after.clone()).is_empty());
    }
}
