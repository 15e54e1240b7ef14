//! The live page of services, instances and traffic: what `sdctl ui`
//! serves for any registry, and what the gateway (`lorem-client gateway`)
//! serves at `/` with its own traffic.
//!
//! # Layout
//!
//! - [`Hub`]: the page's state (services, instances, the registry's state,
//!   a timeline of events, traffic per instance) and its fan-out to viewers
//!   (`hub`). Changes are computed from snapshots by
//!   [`registry::diff`] (the one diff of the workspace).
//! - [`feed`]: what fills a hub: every service of a registry
//!   ([`feed::follow_registry`]) or one balancer ([`feed::follow_balancer`]).
//! - [`registry_page`], [`balancer_page`]: the routes (`http`), with the
//!   feed started and tied to the router's life.
//!
//! # Routes
//!
//! | route            | answer                                                         |
//! |------------------|----------------------------------------------------------------|
//! | `GET /`          | the page (`assets/index.html`, plain HTML)                     |
//! | `GET /ui/app.js`, `GET /ui/style.css` | its script and style (plain JS and CSS, no build step) |
//! | `GET /ui/state`  | the state as JSON (on the gateway: the set and traffic as last followed for an open page, see [`feed::follow_balancer`]) |
//! | `GET /ui/events` | `text/event-stream`: a `state` event with the whole state at once and at every change, a comment line every 15 s |
//!
//! # Why this shape
//!
//! - **One watch, any number of viewers.** The feed is the watch the
//!   process already holds (the gateway's balancer) or one watch per
//!   service (`sdctl ui`); viewers read a [`tokio::sync::watch`] channel of
//!   the serialised state, so a viewer never reaches the registry.
//! - **A crate of its own** because both `sdctl` and the gateway (crate
//!   `client`) serve it: it depends on `registry` and `balancer` only, and
//!   `client` and `sdctl` depend on it, so nothing cycles.
//! - **No front-end toolchain.** Three small files under `assets/`,
//!   embedded with `include_str!`: readable as they are served.
//! - **Safe by default.** Read-only `GET` routes; the script builds the
//!   page with `textContent` and `createElement`, never markup from data,
//!   so a tag or metadata value holding `<script>` shows as text; a strict
//!   Content-Security-Policy forbids inline script besides. The binaries
//!   listen on 127.0.0.1 unless told otherwise.
//! - **Full state per event.** Each event carries the whole (bounded)
//!   state: a viewer that connects late or falls behind is right at its
//!   next event, with no replay logic. Fine for the tens of instances a
//!   page can show; a change stream from the registry (planned) would
//!   feed the same hub.

#![forbid(unsafe_code)]

pub mod feed;
mod http;
mod hub;

use axum::Router;
use balancer::Balancer;
use registry::Watcher;

pub use http::{Closer, HEARTBEAT, MAX_VIEWERS};
pub use hub::{CHART_POINTS, Health, Hub, TIMELINE_LEN};

/// The page over every service of `watcher`'s registry (`sdctl ui`):
/// starts the feed, which stops when the router is dropped. Call the
/// [`Closer`] when the server's shutdown begins.
///
/// # Panics
/// Outside a Tokio runtime (the feed runs as a task).
pub fn registry_page<W: Watcher + 'static>(
    watcher: W,
    title: impl Into<String>,
) -> (Router, Closer) {
    let hub = Hub::new(title, "registry");
    let feed = tokio::spawn(feed::follow_registry(watcher, hub.clone()));
    http::router(hub, http::AbortOnDrop(feed))
}

/// The page over what `balancer` knows, its traffic included (the
/// gateway's `/`): starts the feed, which stops when the router is
/// dropped. Call the [`Closer`] when the server's shutdown begins.
///
/// # Panics
/// Outside a Tokio runtime (the feed runs as a task).
pub fn balancer_page(balancer: Balancer, title: impl Into<String>) -> (Router, Closer) {
    let hub = Hub::new(title, "gateway");
    let feed = tokio::spawn(feed::follow_balancer(balancer, hub.clone()));
    http::router(hub, http::AbortOnDrop(feed))
}
