//! What changed between two snapshots of a service: the one diff that
//! `sdctl watch` prints and the live page's timeline shows.
//!
//! Watches deliver full snapshots ([`WatchStream`](crate::WatchStream));
//! consumers that want changes compare each snapshot with the last one they
//! kept, here, by instance id. (A change stream from the backends
//! themselves would make this unnecessary for them; until then this is the
//! one place that computes changes.)

use std::collections::BTreeMap;

use crate::model::Instance;

/// What happened to one instance between two snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// It appeared.
    Added(Instance),
    /// It went (the instance as it was last seen).
    Removed(Instance),
    /// It is still there, with another address, port, tags, metadata or
    /// weight (the new instance).
    Changed(Instance),
}

impl Change {
    /// `added`, `removed` or `changed`.
    pub fn event(&self) -> &'static str {
        match self {
            Change::Added(_) => "added",
            Change::Removed(_) => "removed",
            Change::Changed(_) => "changed",
        }
    }

    /// The instance concerned.
    pub fn instance(&self) -> &Instance {
        match self {
            Change::Added(i) | Change::Removed(i) | Change::Changed(i) => i,
        }
    }

    /// The text line: `added lorem/a 127.0.0.1:8081 tags=v1 weight=2 meta.zone=eu`
    /// (tags, weight and metadata only when set).
    pub fn line(&self) -> String {
        let i = self.instance();
        let mut line = format!("{} {}/{} {}", self.event(), i.service, i.id, i.authority());
        if !i.tags.is_empty() {
            line.push_str(&format!(" tags={}", i.tags.join(",")));
        }
        if i.weight != 1 {
            line.push_str(&format!(" weight={}", i.weight));
        }
        for (k, v) in &i.metadata {
            line.push_str(&format!(" meta.{k}={v}"));
        }
        line
    }

    /// The JSON line: `{"event": "added", "instance": {...}}`.
    pub fn json(&self) -> String {
        serde_json::json!({ "event": self.event(), "instance": self.instance() }).to_string()
    }
}

/// The changes from `before` (by id) to `after`, in id order.
pub fn diff(before: &BTreeMap<String, Instance>, after: &[Instance]) -> Vec<Change> {
    let after: BTreeMap<&str, &Instance> = after.iter().map(|i| (i.id.as_str(), i)).collect();
    let mut changes = Vec::new();
    for (id, old) in before {
        match after.get(id.as_str()) {
            None => changes.push(Change::Removed(old.clone())),
            Some(new) if *new != old => changes.push(Change::Changed((*new).clone())),
            Some(_) => {}
        }
    }
    for (id, new) in &after {
        if !before.contains_key(*id) {
            changes.push(Change::Added((*new).clone()));
        }
    }
    changes.sort_by(|a, b| a.instance().id.cmp(&b.instance().id));
    changes
}

/// A snapshot by id, as [`diff`] takes its `before`.
pub fn by_id(snapshot: &[Instance]) -> BTreeMap<String, Instance> {
    snapshot.iter().map(|i| (i.id.clone(), i.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lorem(id: &str, port: u16) -> Instance {
        Instance::new("lorem", id, "127.0.0.1", port)
    }

    #[test]
    fn diff_names_each_added_removed_and_changed_instance() {
        let before = by_id(&[lorem("a", 1), lorem("b", 2)]);
        let after = [lorem("a", 9).with_tag("v2"), lorem("c", 3)];
        let lines: Vec<String> = diff(&before, &after).iter().map(Change::line).collect();
        assert_eq!(
            lines,
            [
                "changed lorem/a 127.0.0.1:9 tags=v2",
                "removed lorem/b 127.0.0.1:2",
                "added lorem/c 127.0.0.1:3",
            ]
        );
        let change = Change::Added(lorem("d", 4).with_weight(3).with_metadata("zone", "eu"));
        assert_eq!(
            change.line(),
            "added lorem/d 127.0.0.1:4 weight=3 meta.zone=eu"
        );
        let json: serde_json::Value = serde_json::from_str(&change.json()).unwrap();
        assert_eq!(json["event"], "added");
        assert_eq!(json["instance"]["metadata"]["zone"], "eu");
        assert!(diff(&by_id(&after), &after).is_empty());
    }
}
