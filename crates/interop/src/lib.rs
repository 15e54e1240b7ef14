//! Interop tests, in `tests/`: our registries shared with services of other
//! frameworks, checked with their real client libraries.
//!
//! - `java/curator`: plain Apache Curator x-discovery 5.7.1 (the ZooKeeper
//!   layout of Spring Cloud Zookeeper and Dubbo 3), registering and listing
//!   with a map payload;
//! - `java/spring`: Spring Cloud Zookeeper 4.1.2's own registry
//!   (`ZookeeperServiceRegistry`), payload (`ZookeeperInstance`) and
//!   `ZookeeperDiscoveryClient`, wired by hand as its auto-configuration
//!   wires them, without a Spring Boot application;
//! - `go`: go-kit v0.13 `sd/etcdv3`, `sd/zk`, `sd/consul`, and Kratos'
//!   `registry.ServiceInstance` written and read the way Kratos' etcd,
//!   ZooKeeper and Consul registries do (its registry modules are not
//!   served by the module proxy here).
//!
//! The programs are built once per source change (Maven into
//! `target/tmp/interop`, downloads cached in `~/.m2`; Go with its own
//! module and build caches) by `tests/common`. Nothing here is a library:
//! this file only documents the crate.

#![forbid(unsafe_code)]
