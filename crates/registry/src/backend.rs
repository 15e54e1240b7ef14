//! For backend authors: the pieces a registry implementation needs that a
//! user of the crate does not.
//!
//! A backend implements [`Registrar`](crate::Registrar) and
//! [`Watcher`](crate::Watcher); its `register` hands the user a
//! [`Registration`] made with [`registration`] around its own
//! [`KeepAlive`], which ends the keep-alive on deregistration, abandon or
//! drop. The backends of this crate do that through one shared state
//! machine (see the `registrar` module's docs for the rules a backend
//! should follow: per-id ordering, owner tokens, the duplicate-id rule).

use crate::model::Instance;
pub use crate::traits::KeepAlive;
use crate::traits::Registration;

/// Wraps a backend's keep-alive of `instance` in the handle users hold.
pub fn registration(instance: Instance, keeper: Box<dyn KeepAlive>) -> Registration {
    Registration::new(instance, keeper)
}
