//! The zookeeper backend (being written).
#![allow(missing_docs, unreachable_pub, dead_code)]

use async_trait::async_trait;

use crate::config::{Settings, ZookeeperConfig};
use crate::discovery::{Registrar, Registration, WatchStream, Watcher};
use crate::error::{Error, Result};
use crate::model::Instance;

#[derive(Debug, Clone)]
pub struct ZookeeperRegistry;

impl ZookeeperRegistry {
    pub async fn connect(_config: &ZookeeperConfig, _settings: &Settings) -> Result<Self> {
        Err(Error::InvalidConfig(
            "zookeeper backend not written yet".into(),
        ))
    }
}

#[async_trait]
impl Registrar for ZookeeperRegistry {
    async fn register(&self, _instance: Instance) -> Result<Registration> {
        Err(Error::InvalidConfig(
            "zookeeper backend not written yet".into(),
        ))
    }
}

#[async_trait]
impl Watcher for ZookeeperRegistry {
    async fn instances(&self, _service: &str) -> Result<Vec<Instance>> {
        Err(Error::InvalidConfig(
            "zookeeper backend not written yet".into(),
        ))
    }
    async fn services(&self) -> Result<Vec<String>> {
        Err(Error::InvalidConfig(
            "zookeeper backend not written yet".into(),
        ))
    }
    fn watch(&self, _service: &str) -> WatchStream {
        Box::pin(futures::stream::empty())
    }
}
