//! The consul backend (being written).
#![allow(missing_docs, unreachable_pub, dead_code)]

use async_trait::async_trait;

use crate::config::{ConsulConfig, Settings};
use crate::discovery::{Registrar, Registration, WatchStream, Watcher};
use crate::error::{Error, Result};
use crate::model::Instance;

#[derive(Debug, Clone)]
pub struct ConsulRegistry;

impl ConsulRegistry {
    pub async fn connect(_config: &ConsulConfig, _settings: &Settings) -> Result<Self> {
        Err(Error::InvalidConfig(
            "consul backend not written yet".into(),
        ))
    }
}

#[async_trait]
impl Registrar for ConsulRegistry {
    async fn register(&self, _instance: Instance) -> Result<Registration> {
        Err(Error::InvalidConfig(
            "consul backend not written yet".into(),
        ))
    }
}

#[async_trait]
impl Watcher for ConsulRegistry {
    async fn instances(&self, _service: &str) -> Result<Vec<Instance>> {
        Err(Error::InvalidConfig(
            "consul backend not written yet".into(),
        ))
    }
    async fn services(&self) -> Result<Vec<String>> {
        Err(Error::InvalidConfig(
            "consul backend not written yet".into(),
        ))
    }
    fn watch(&self, _service: &str) -> WatchStream {
        Box::pin(futures::stream::empty())
    }
}
