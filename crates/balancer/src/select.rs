//! Which instances of a service a balancer uses: a [`Selector`] on tags and
//! metadata, and a [`ZonePreference`].
//!
//! **Selection** filters the set the registry delivers before anything
//! else sees it: an instance is in the live set only if it carries every
//! tag and every metadata pair of the selector (go-kit's
//! `tags="[lorem ru-rocker]"` passing filter). An empty selector keeps
//! everything.
//!
//! **Zone preference.** With a zone set, tries go to the instances whose
//! metadata `zone` ([`ZONE_KEY`]) is that zone, as long as enough of them
//! are healthy: at least [`ZonePreference::min_healthy_percent`] percent of
//! the local instances (and at least one) must be neither ejected nor
//! backing off. Below that, or when every local instance was already tried
//! by the request, tries go to the whole set: the other zones take the
//! traffic rather than a few local survivors taking all of it. With the
//! default of 50%, two local instances of which one is ejected still keep
//! the traffic local; three of which two are ejected do not.

use std::collections::BTreeMap;

use registry::Instance;

use crate::error::{Error, Result};

/// The metadata key that names an instance's zone.
pub const ZONE_KEY: &str = "zone";

/// The default [`ZonePreference::min_healthy_percent`].
pub const DEFAULT_ZONE_MIN_HEALTHY_PERCENT: u32 = 50;

/// The instances a balancer uses: those with all of `tags` and all of
/// `metadata`. See the [module docs](self).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selector {
    /// Tags an instance must all carry (in any order, among others).
    pub tags: Vec<String>,
    /// Metadata pairs an instance must all have, with these exact values.
    pub metadata: BTreeMap<String, String>,
}

impl Selector {
    /// True when `instance` is selected.
    pub fn matches(&self, instance: &Instance) -> bool {
        self.tags.iter().all(|tag| instance.tags.contains(tag))
            && self
                .metadata
                .iter()
                .all(|(key, value)| instance.metadata.get(key) == Some(value))
    }

    /// True when it selects everything.
    pub fn is_empty(&self) -> bool {
        self.tags.is_empty() && self.metadata.is_empty()
    }
}

/// Prefer the instances of one zone while enough of them are healthy. See
/// the [module docs](self).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZonePreference {
    /// The zone to prefer: compared with each instance's metadata `zone`.
    pub zone: String,
    /// The share of the local instances (in percent, 0 to 100) that must be
    /// healthy for the preference to hold; at least one must be, whatever
    /// the share.
    pub min_healthy_percent: u32,
}

impl ZonePreference {
    /// Prefer `zone`, with the default threshold.
    pub fn new(zone: impl Into<String>) -> Self {
        ZonePreference {
            zone: zone.into(),
            min_healthy_percent: DEFAULT_ZONE_MIN_HEALTHY_PERCENT,
        }
    }

    /// True when `instance` is in the zone.
    pub fn is_local(&self, instance: &Instance) -> bool {
        instance.metadata.get(ZONE_KEY) == Some(&self.zone)
    }

    /// True when `healthy` of `local` local instances are enough to keep the
    /// traffic in the zone.
    pub fn holds(&self, healthy: usize, local: usize) -> bool {
        healthy >= 1 && healthy * 100 >= local * self.min_healthy_percent.min(100) as usize
    }
}

/// Parses a `key=value` pair as users write it on a command line
/// (`--metadata version=v2`): the value parser of such flags.
///
/// # Errors
/// [`Error::InvalidOptions`] naming the text when there is no `=` or the
/// key is empty.
pub fn parse_key_value(text: &str) -> Result<(String, String)> {
    match text.split_once('=') {
        Some((key, value)) if !key.trim().is_empty() => {
            Ok((key.trim().to_owned(), value.trim().to_owned()))
        }
        _ => Err(Error::InvalidOptions(format!(
            "{text:?} is not a key=value pair; write it like version=v2"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance(tags: &[&str], metadata: &[(&str, &str)]) -> Instance {
        let mut instance = Instance::new("lorem", "a", "127.0.0.1", 1);
        instance.tags = tags.iter().map(|t| (*t).to_owned()).collect();
        instance.metadata = metadata
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        instance
    }

    #[test]
    fn a_selector_needs_every_tag_and_pair() {
        let selector = Selector {
            tags: vec!["lorem".into(), "ru-rocker".into()],
            metadata: BTreeMap::from([("version".into(), "v2".into())]),
        };
        assert!(selector.matches(&instance(
            &["ru-rocker", "x", "lorem"],
            &[("version", "v2"), ("zone", "eu")]
        )));
        assert!(!selector.matches(&instance(&["lorem"], &[("version", "v2")])));
        assert!(!selector.matches(&instance(&["lorem", "ru-rocker"], &[("version", "v1")])));
        assert!(!selector.matches(&instance(&["lorem", "ru-rocker"], &[])));
        assert!(Selector::default().matches(&instance(&[], &[])));
    }

    #[test]
    fn the_zone_threshold_is_a_share_of_the_local_instances() {
        let eu = ZonePreference::new("eu");
        assert!(eu.is_local(&instance(&[], &[("zone", "eu")])));
        assert!(!eu.is_local(&instance(&[], &[("zone", "us")])));
        assert!(!eu.is_local(&instance(&[], &[])));
        // 50%: one of two is enough, one of three is not, none never is.
        assert!(eu.holds(1, 2));
        assert!(!eu.holds(1, 3));
        assert!(eu.holds(2, 3));
        assert!(!eu.holds(0, 0));
        let any = ZonePreference {
            min_healthy_percent: 0,
            ..ZonePreference::new("eu")
        };
        assert!(any.holds(1, 10) && !any.holds(0, 10));
    }

    #[test]
    fn key_value_pairs_parse() {
        assert_eq!(
            parse_key_value(" version = v2 ").ok(),
            Some(("version".to_owned(), "v2".to_owned()))
        );
        assert_eq!(
            parse_key_value("empty=").ok(),
            Some(("empty".to_owned(), String::new()))
        );
        let error = parse_key_value("v2").expect_err("no =");
        assert_eq!(
            error.to_string(),
            "invalid balancer options: \"v2\" is not a key=value pair; write it like version=v2"
        );
        assert!(parse_key_value("=v2").is_err());
    }
}
