//! A registrar that connects on first use.

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::{DynRegistry, Instance, Registrar, Registration, Settings};

/// A [`Registrar`] that connects to the configured registry on first use.
///
/// Why: connecting inside `register` means an unreachable registry at
/// start-up is just a failed registration, which the lifecycle's retry loop
/// covers, instead of a fatal error: a server started before its registry
/// (compose, a cold cluster) serves, reports not ready, and registers once
/// the registry answers. The connection, once made, is cached and shared.
///
/// ```
/// use registry::lifecycle::ConnectOnDemand;
/// use registry::{Instance, Registrar, Settings};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), registry::Error> {
/// // The default settings select the process-wide in-memory registry.
/// let registrar = ConnectOnDemand::new(Settings::default());
/// assert!(registrar.registry().is_none(), "nothing connected yet");
/// let registration = registrar
///     .register(Instance::new("doc-on-demand", "a", "127.0.0.1", 8080))
///     .await?;
/// assert!(registrar.registry().is_some());
/// registration.deregister().await?;
/// # Ok(())
/// # }
/// ```
pub struct ConnectOnDemand {
    settings: Settings,
    registry: OnceCell<DynRegistry>,
}

impl std::fmt::Debug for ConnectOnDemand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOnDemand")
            .field("backend", &self.settings.backend.name())
            .field("connected", &self.registry.initialized())
            .finish()
    }
}

impl ConnectOnDemand {
    /// A registrar for the registry `settings` describe; nothing is
    /// connected yet.
    pub fn new(settings: Settings) -> Self {
        ConnectOnDemand {
            settings,
            registry: OnceCell::new(),
        }
    }

    /// The settings it connects with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The connected registry, once a registration has connected it.
    pub fn registry(&self) -> Option<&DynRegistry> {
        self.registry.get()
    }
}

#[async_trait]
impl Registrar for ConnectOnDemand {
    async fn register(&self, instance: Instance) -> crate::Result<Registration> {
        let registry = self
            .registry
            .get_or_try_init(|| async {
                let registry = crate::connect(&self.settings).await?;
                tracing::info!(
                    backend = self.settings.backend.name(),
                    "connected to the registry"
                );
                Ok::<_, crate::Error>(registry)
            })
            .await?;
        registry.register(instance).await
    }
}
