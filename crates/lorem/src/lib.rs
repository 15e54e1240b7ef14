//! The lorem-ipsum service: go-kit's lorem example, registered in a service
//! registry.
//!
//! # Layout
//!
//! - [`generate`]: the domain. [`LoremRequest`](generate::LoremRequest)
//!   parses and checks `type`, `min` and `max`;
//!   [`Generator`](generate::Generator) turns a request into text, drawing
//!   from an injected random number generator.
//! - [`http`]: the axum [`router`](http::router): `POST /lorem/{type}/{min}/{max}`,
//!   `GET /health`, `GET /metrics`, JSON errors, the `x-instance-id` header on
//!   every answer.
//! - [`metrics`]: the Prometheus metrics each server counts and serves
//!   (requests by type and status, a latency histogram).
//! - [`server`]: [`start`](server::start) binds, serves and registers (retrying
//!   in the background); [`RunningServer`](server::RunningServer) shuts down
//!   gracefully (deregister, drain, finish in-flight requests) or crashes on
//!   purpose for demos and tests. The lifecycle itself is
//!   [`registry::lifecycle`]; this module holds what is lorem's (options,
//!   the advertised address, the router).
//! - [`health`]: the container healthcheck's probe of `GET /ready`.
//! - `src/bin/lorem-server.rs`: the binary, flags and wiring only.

#![forbid(unsafe_code)]

pub mod generate;
pub mod health;
pub mod http;
pub mod metrics;
pub mod server;
