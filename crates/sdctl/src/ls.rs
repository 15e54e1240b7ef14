//! `sdctl ls [SERVICE] [--json]`: the services with live instances, or one
//! service's instances.
//!
//! Without a service, a table of `SERVICE INSTANCES`; `--json` gives
//! `{"services": [{"name": "lorem", "instances": 2}]}`. With a service, a
//! table of `ID ADDRESS TAGS WEIGHT METADATA`; `--json` gives
//! `{"instances": [...]}`, each instance in the stored JSON form (see the
//! storage layouts in docs/backends.md). A service without live instances is an
//! [`Error::UnknownService`] that lists the services there are.

use futures::StreamExt;
use registry::{Instance, Watcher};
use serde::Serialize;

use crate::error::{Error, Result, known_services};
use crate::table::{Align, Table};

/// How many services [`services`] counts the instances of at once.
const CONCURRENT_READS: usize = 8;

/// One line of `sdctl ls`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSummary {
    /// The service name.
    pub name: String,
    /// How many live instances it has (read just after the names, so a
    /// service may show 0 if its last instance went in between).
    pub instances: usize,
}

/// The services with live instances and how many each has.
///
/// # Errors
/// A registry error if a read fails or times out.
pub async fn services<W: Watcher + ?Sized>(watcher: &W) -> Result<Vec<ServiceSummary>> {
    let names = watcher.services().await?;
    let counts: Vec<Result<ServiceSummary>> = futures::stream::iter(names)
        .map(|name| async move {
            let instances = watcher.instances(&name).await?.len();
            Ok(ServiceSummary { name, instances })
        })
        .buffered(CONCURRENT_READS)
        .collect()
        .await;
    counts.into_iter().collect()
}

/// The live instances of `service`, sorted by id.
///
/// # Errors
/// [`Error::UnknownService`] if it has none (naming `registry`, see
/// [`describe`](crate::describe), and the services there are); a registry
/// error for an invalid name or a failed read.
pub async fn instances<W: Watcher + ?Sized>(
    watcher: &W,
    registry: &str,
    service: &str,
) -> Result<Vec<Instance>> {
    registry::validate_name("service", service)?;
    let instances = watcher.instances(service).await?;
    if instances.is_empty() {
        let known = watcher.services().await.unwrap_or_default();
        return Err(Error::UnknownService {
            service: service.to_owned(),
            registry: registry.to_owned(),
            known: known_services(&known),
        });
    }
    Ok(instances)
}

/// `SERVICE INSTANCES`, one row per service.
pub fn services_table(services: &[ServiceSummary]) -> String {
    let mut table = Table::new(&["SERVICE", "INSTANCES"], &[Align::Left, Align::Right]);
    for s in services {
        table.row(vec![s.name.clone(), s.instances.to_string()]);
    }
    table.render()
}

/// `{"services": [{"name": ..., "instances": N}, ...]}`.
pub fn services_json(services: &[ServiceSummary]) -> String {
    serde_json::json!({ "services": services }).to_string()
}

/// `ID ADDRESS TAGS WEIGHT METADATA`, one row per instance.
pub fn instances_table(instances: &[Instance]) -> String {
    let mut table = Table::new(
        &["ID", "ADDRESS", "TAGS", "WEIGHT", "METADATA"],
        &[Align::Left, Align::Left, Align::Left, Align::Right],
    );
    for i in instances {
        table.row(vec![
            i.id.clone(),
            i.authority(),
            i.tags.join(","),
            i.weight.to_string(),
            i.metadata
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(","),
        ]);
    }
    table.render()
}

/// `{"instances": [...]}`, each in the stored JSON form.
pub fn instances_json(instances: &[Instance]) -> String {
    serde_json::json!({ "instances": instances }).to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use registry::{MemoryRegistry, Registrar};

    use super::*;

    #[tokio::test]
    async fn lists_services_and_instances_and_names_an_unknown_service() {
        let registry = MemoryRegistry::new(Duration::from_secs(10));
        let _a = registry
            .register(
                Instance::new("lorem", "a", "127.0.0.1", 8081)
                    .with_tag("v1")
                    .with_metadata("zone", "eu")
                    .with_weight(2),
            )
            .await
            .unwrap();
        let _b = registry
            .register(Instance::new("lorem", "b", "::1", 8082))
            .await
            .unwrap();
        let found = services(&registry).await.unwrap();
        assert_eq!(
            found,
            [ServiceSummary {
                name: "lorem".into(),
                instances: 2
            }]
        );
        assert_eq!(
            services_table(&found),
            "SERVICE  INSTANCES\nlorem            2\n"
        );
        assert_eq!(
            services_json(&found),
            r#"{"services":[{"instances":2,"name":"lorem"}]}"#
        );

        let listed = instances(&registry, "memory", "lorem").await.unwrap();
        assert_eq!(
            instances_table(&listed),
            "ID  ADDRESS         TAGS  WEIGHT  METADATA\n\
             a   127.0.0.1:8081  v1         2  zone=eu\n\
             b   [::1]:8082                 1\n"
        );
        let json: serde_json::Value = serde_json::from_str(&instances_json(&listed)).unwrap();
        assert_eq!(json["instances"][0]["id"], "a");
        assert_eq!(json["instances"][0]["metadata"]["zone"], "eu");
        assert_eq!(json["instances"][1]["address"], "::1");

        let error = instances(&registry, "memory", "nope").await.unwrap_err();
        assert_eq!(
            error.to_string(),
            "no live instances of service \"nope\" in memory; services with live instances: lorem"
        );
        let error = instances(&registry, "memory", "a b").await.unwrap_err();
        assert!(error.to_string().contains("service \"a b\""), "{error}");
    }
}
