//! Paged reads at one revision, and the watch that continues from them.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{GetOptions, KeyValue, WatchOptions};
use tokio::time::Instant;

use super::{BACKEND, Ctx, DEFAULT_PAGE_SIZE, Kind, MAX_PAGE_SIZE, PAGE_BYTES, kind_of};
use crate::backoff::Backoff;
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::record::decode_record;
use crate::watch_sink::{SnapshotSink, silence_limit};

/// How many times a paged read starts over when the revision it started at
/// is compacted between two pages.
const COMPACTED_RETRIES: usize = 3;

/// The instances of one service in key order (so by id), as of one
/// revision: each behind the `Arc` the watch's set will keep, so that a
/// full read of N instances holds one copy of them, not one per step.
pub(super) type Instances = Vec<Arc<Instance>>;

/// The first key after every key that starts with `prefix`.
fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // All 0xff (never for our prefixes): no upper bound.
    vec![0]
}

/// The key right after `key`.
fn key_after(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// One `Range` page of `[start, end)`, at `revision` (0 = the newest).
struct Page {
    kvs: Vec<KeyValue>,
    more: bool,
    revision: i64,
}

/// What asking for one page gave.
enum Fetched {
    Page(Page),
    /// The revision asked for has been compacted away.
    Compacted,
    /// The reply was over the decoding limit: ask for fewer keys.
    TooLarge,
}

/// Whether `error` is tonic refusing a reply over the decoding limit.
fn too_large(error: &etcd_client::Error) -> bool {
    matches!(error, etcd_client::Error::GRpcStatus(status)
        if status.message().contains("decoded message length too large"))
}

/// Reads one page of at most `limit` keys.
async fn page(ctx: &Ctx, start: &[u8], end: &[u8], revision: i64, limit: usize) -> Result<Fetched> {
    let limit = i64::try_from(limit).unwrap_or(i64::MAX);
    let mut options = GetOptions::new().with_range(end.to_vec()).with_limit(limit);
    if revision > 0 {
        options = options.with_revision(revision);
    }
    ctx.call("read", |member| {
        let mut kv = member.kv.clone();
        let (start, options) = (start.to_vec(), options.clone());
        async move {
            match kv.get(start, Some(options)).await {
                Ok(mut response) => Ok(Fetched::Page(Page {
                    revision: response.header().map_or(revision, |h| h.revision()),
                    more: response.more(),
                    kvs: response.take_kvs(),
                })),
                Err(error) if kind_of(&error) == Kind::Compacted => Ok(Fetched::Compacted),
                Err(error) if too_large(&error) => Ok(Fetched::TooLarge),
                Err(error) => Err(error),
            }
        }
    })
    .await
}

/// How many keys to ask for next, the largest record (key and value) seen
/// so far being `largest` bytes: about [`PAGE_BYTES`] worth, between
/// [`DEFAULT_PAGE_SIZE`] and [`MAX_PAGE_SIZE`]. A read of 50,000 small
/// records takes 8 round trips instead of 391.
fn grown_limit(largest: usize) -> usize {
    (PAGE_BYTES / largest.max(1)).clamp(DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
}

/// Where a paged scan goes after a page.
enum Next {
    /// Just after the last key read.
    AfterLast,
    /// To this key (skipping what lies between).
    SkipTo(Vec<u8>),
}

/// Reads `[start, end)` page by page, all pages at the revision of the first,
/// handing every key to `visit`; starts over (a few times) if that revision
/// is compacted midway. Returns the revision read. Pages after the first
/// grow by the largest record seen ([`grown_limit`]) unless the scan skips
/// keys or a test fixed the page size; one over the decoding limit is read
/// again with half as many keys.
async fn scan<S: Default>(
    ctx: &Ctx,
    start: &str,
    end: Vec<u8>,
    mut visit: impl FnMut(&mut S, &KeyValue),
    mut next: impl FnMut(&S, &KeyValue) -> Next,
) -> Result<(S, i64)> {
    let mut attempts = 0;
    'again: loop {
        let mut state = S::default();
        let mut from = start.as_bytes().to_vec();
        let mut revision = 0;
        let mut limit = ctx.page_size;
        let mut largest = 0;
        // A scan that skips (the services listing) keeps small pages: a
        // grown one would read thousands of keys it then skips.
        let mut grow = ctx.grow_pages;
        loop {
            let page = match page(ctx, &from, &end, revision, limit).await? {
                Fetched::Page(page) => page,
                Fetched::TooLarge if limit > 1 => {
                    limit /= 2;
                    // Grow no further than this on the pages after.
                    largest = largest.max(PAGE_BYTES / limit);
                    tracing::debug!(
                        backend = BACKEND,
                        start,
                        limit,
                        "page over the decoding limit; asking for fewer keys"
                    );
                    continue;
                }
                Fetched::TooLarge => {
                    return Err(Error::unavailable(
                        BACKEND,
                        &*ctx.addr,
                        format!(
                            "the record at {} is larger than the decoding limit",
                            String::from_utf8_lossy(&from)
                        ),
                    ));
                }
                Fetched::Compacted if attempts < COMPACTED_RETRIES => {
                    attempts += 1;
                    tracing::debug!(
                        backend = BACKEND,
                        start,
                        revision,
                        "revision compacted during a paged read; reading again"
                    );
                    continue 'again;
                }
                Fetched::Compacted => {
                    return Err(Error::unavailable(
                        BACKEND,
                        &*ctx.addr,
                        format!(
                            "revision {revision} compacted during every attempt to read {start}"
                        ),
                    ));
                }
            };
            revision = page.revision;
            for kv in &page.kvs {
                largest = largest.max(kv.key().len() + kv.value().len());
                visit(&mut state, kv);
            }
            if grow {
                limit = grown_limit(largest);
            }
            match page.kvs.last() {
                Some(last) if page.more => {
                    from = match next(&state, last) {
                        Next::AfterLast => key_after(last.key()),
                        Next::SkipTo(key) => {
                            grow = false;
                            limit = limit.min(ctx.page_size);
                            key
                        }
                    };
                    if from >= end {
                        return Ok((state, revision));
                    }
                }
                _ => return Ok((state, revision)),
            }
        }
    }
}

/// Decodes one key/value found under `<prefix>/<service>/`.
fn decode(
    service_prefix: &str,
    service: &str,
    kv: &KeyValue,
    kratos_scheme: &str,
) -> Option<Instance> {
    let Ok(key) = std::str::from_utf8(kv.key()) else {
        tracing::warn!(backend = BACKEND, key = ?String::from_utf8_lossy(kv.key()), "skipping a key that is not UTF-8 under the registry prefix");
        return None;
    };
    let id = key.strip_prefix(service_prefix)?;
    decode_record(BACKEND, key, service, id, kv.value(), kratos_scheme)
}

/// The live instances of `service` by key, and the revision they were read at.
pub(super) async fn snapshot(ctx: &Ctx, service: &str) -> Result<(Instances, i64)> {
    let prefix = ctx.service_prefix(service);
    scan(
        ctx,
        &prefix,
        prefix_end(&prefix),
        |instances: &mut Instances, kv| {
            // Keys are unique and come in order: no map needed.
            if let Some(instance) = decode(&prefix, service, kv, &ctx.interop.kratos_scheme) {
                instances.push(Arc::new(instance));
            }
        },
        |_, _| Next::AfterLast,
    )
    .await
}

/// The names of the services with at least one valid instance.
pub(super) async fn services(ctx: &Ctx) -> Result<BTreeSet<String>> {
    let root = format!("{}/", ctx.prefix);
    // The service part of a key, if it has the shape <root><service>/<id>.
    let service_of = |key: &[u8]| -> Option<String> {
        let rest = std::str::from_utf8(key).ok()?.strip_prefix(root.as_str())?;
        let (service, _id) = rest.split_once('/')?;
        Some(service.to_owned())
    };
    let (services, _revision) = scan(
        ctx,
        &root,
        prefix_end(&root),
        |found: &mut BTreeSet<String>, kv| {
            let Some(service) = service_of(kv.key()) else {
                tracing::warn!(backend = BACKEND, key = %String::from_utf8_lossy(kv.key()),
                    "skipping a key that is not <prefix>/<service>/<id>");
                return;
            };
            if found.contains(&service) {
                return;
            }
            let service_prefix = format!("{root}{service}/");
            if decode(&service_prefix, &service, kv, &ctx.interop.kratos_scheme).is_some() {
                found.insert(service);
            }
        },
        // Once a service is known to be live, skip the rest of its keys:
        // `<root><service>0` is the first key after `<root><service>/...`.
        |found, last| match service_of(last.key()) {
            Some(service) if found.contains(&service) => {
                Next::SkipTo(format!("{root}{service}0").into_bytes())
            }
            _ => Next::AfterLast,
        },
    )
    .await?;
    Ok(services)
}

/// Why one round of [`watch_round`] ended.
enum End {
    /// The consumer dropped the stream.
    Closed,
    /// The history the watch needed was compacted: read a fresh snapshot.
    Compacted,
    /// The snapshot or the watch request failed on every member.
    Failed(Error),
    /// The watch stream broke after it had started.
    Broken(Error),
    /// The watch's member stopped answering (no reply to a progress
    /// request): read again, from another member if one answers.
    Silent {
        /// The member that went silent.
        member: usize,
        /// What happened, for the log.
        error: Error,
    },
}

/// Feeds `sink` with full snapshots of `service` until the consumer leaves.
///
/// Outages are reported through the sink's contract (one `Err` item per
/// outage, the next snapshot always sent); a member that hangs or breaks
/// is not an outage while another answers: the watch reads again from
/// that one, and the sink drops the snapshot if nothing changed.
pub(super) async fn watch(ctx: Ctx, service: String, mut sink: SnapshotSink) {
    let mut backoff = Backoff::reconnect();
    let mut compactions_in_a_row = 0u32;
    // The deadline of the next snapshot read: REGISTRY_TIMEOUT, but after a
    // member went silent three quarters of the silence limit: enough for the
    // others to elect a new leader when the silent one led (reads wait for
    // one), short enough that a registry where no member answers is
    // reported within about 1.25 x the limit.
    let mut read_within = ctx.timeout;
    loop {
        let end = watch_round(&ctx, &service, &mut sink, &mut backoff, read_within).await;
        read_within = ctx.timeout;
        match end {
            End::Closed => return,
            End::Compacted => {
                compactions_in_a_row += 1;
                tracing::info!(backend = BACKEND, service = %service,
                    "watch history compacted; reading a fresh snapshot");
                if compactions_in_a_row > 1 {
                    backoff.wait().await;
                }
            }
            End::Broken(error) => {
                compactions_in_a_row = 0;
                tracing::warn!(backend = BACKEND, service = %service, %error,
                    "watch stream broke; reading a fresh snapshot");
                backoff.wait().await;
            }
            End::Silent { member, error } => {
                compactions_in_a_row = 0;
                tracing::warn!(backend = BACKEND, service = %service, %error,
                    "watch's etcd member stopped answering; reading again from another member");
                ctx.members.skip(member);
                read_within = ctx.timeout.min(silence_limit(ctx.ttl) * 3 / 4);
            }
            End::Failed(error) => {
                compactions_in_a_row = 0;
                if !sink.error(error).await {
                    return;
                }
                backoff.wait().await;
            }
        }
    }
}

/// How long a watch stream may stay quiet before we ask for a progress
/// report, and how long the answer may take: a quarter of the silence
/// limit each, so that a silent member is noticed within half of it; the
/// read that follows (from another member) has three quarters.
///
/// etcd 3.4 answers a progress request at once. From 3.5 on a member
/// answers only once every watcher of the stream has caught up with it; a
/// member that lags that much is worth leaving too, and the read that
/// follows (from another member) loses nothing.
fn progress_interval(ctx: &Ctx) -> Duration {
    silence_limit(ctx.ttl) / 4
}

/// One snapshot, then one watch from the snapshot's revision, until
/// something ends it.
async fn watch_round(
    ctx: &Ctx,
    service: &str,
    sink: &mut SnapshotSink,
    backoff: &mut Backoff,
    read_within: Duration,
) -> End {
    let read = tokio::time::timeout(read_within, snapshot(ctx, service)).await;
    let (instances, revision) = match read {
        Ok(Ok(read)) => read,
        Ok(Err(error)) => return End::Failed(error),
        Err(_) => {
            return End::Failed(Error::unavailable(
                BACKEND,
                &*ctx.addr,
                format!(
                    "no etcd member answered a read of {service} within {read_within:?}; the last snapshot may be stale"
                ),
            ));
        }
    };
    sink.replace(instances);
    if !sink.publish() {
        return End::Closed;
    }
    if !ctx.watch_start_delay.is_zero() {
        tokio::time::sleep(ctx.watch_start_delay).await;
    }

    // Starting right after the snapshot's revision, no change can fall
    // between the read and the watch, whichever member serves the watch.
    let prefix = ctx.service_prefix(service);
    let options = WatchOptions::new()
        .with_prefix()
        .with_start_revision(revision + 1);
    let (member, endpoint, mut stream) = match ctx
        .call("watch", |member| {
            let mut watch = member.watch.clone();
            let (index, endpoint) = (member.index, member.endpoint.clone());
            let (prefix, options) = (prefix.clone(), options.clone());
            async move {
                let stream = watch.watch(prefix, Some(options)).await?;
                Ok((index, endpoint, stream))
            }
        })
        .await
    {
        Ok(opened) => opened,
        Err(error) => return End::Failed(error),
    };
    tracing::debug!(backend = BACKEND, service, revision, member = %endpoint, "watching");

    // A hung member breaks no connection: ask for a progress report
    // whenever the stream has been quiet for a while, and give up on the
    // member if nothing at all comes back in time.
    let interval = progress_interval(ctx);
    let mut heard = Instant::now();
    let mut asked: Option<Instant> = None;
    loop {
        let check_at = match asked {
            Some(at) => at + interval,
            None => heard + interval,
        };
        let message = tokio::select! {
            message = stream.message() => message,
            () = tokio::time::sleep_until(check_at) => {
                if asked.is_some() {
                    return End::Silent {
                        member,
                        error: Error::unavailable(BACKEND, &*endpoint, format!(
                            "no answer on the watch stream for {:?}, progress request included",
                            heard.elapsed()
                        )),
                    };
                }
                if let Err(error) = stream.request_progress().await {
                    return End::Broken(ctx.error("watch", error));
                }
                asked = Some(Instant::now());
                continue;
            }
        };
        heard = Instant::now();
        asked = None;
        let response = match message {
            Ok(Some(response)) => response,
            Ok(None) => {
                return End::Broken(Error::unavailable(
                    BACKEND,
                    &*endpoint,
                    "the watch stream was closed by the server",
                ));
            }
            Err(error) => return End::Broken(ctx.error("watch", error)),
        };
        if response.compact_revision() > 0 {
            tracing::debug!(
                backend = BACKEND,
                service,
                from = revision + 1,
                compacted = response.compact_revision(),
                "watch start revision compacted"
            );
            return End::Compacted;
        }
        if response.canceled() {
            return End::Broken(Error::unavailable(
                BACKEND,
                &*endpoint,
                format!(
                    "the server cancelled the watch: {}",
                    response.cancel_reason()
                ),
            ));
        }
        if response.created() {
            backoff.reset();
        }
        // A progress report carries no events: it only proved the member
        // alive. Each event is applied to the shared set in O(log N).
        let mut changed = false;
        for event in response.events() {
            let Some(kv) = event.kv() else { continue };
            // A deleted key comes back with version 0; a put has version >= 1.
            // (etcd-client's `event_type` panics on unknown types; this
            // cannot.)
            let found = if kv.version() == 0 {
                None
            } else {
                decode(&prefix, service, kv, &ctx.interop.kratos_scheme)
            };
            changed |= match found {
                Some(instance) => sink.put(instance),
                None => match std::str::from_utf8(kv.key())
                    .ok()
                    .and_then(|key| key.strip_prefix(prefix.as_str()))
                {
                    Some(id) => sink.remove(id),
                    None => false,
                },
            };
        }
        if changed {
            tracing::trace!(
                backend = BACKEND,
                service,
                instances = sink.state().len(),
                "watch updated"
            );
            if !sink.publish() {
                return End::Closed;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end("/services/lorem/"), b"/services/lorem0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
        assert_eq!(key_after(b"/a"), b"/a\0".to_vec());
    }

    #[test]
    fn pages_grow_by_the_largest_record_seen() {
        // Typical records (a few hundred bytes): the largest page.
        assert_eq!(grown_limit(400), MAX_PAGE_SIZE);
        // About 4 MiB worth in between.
        assert_eq!(grown_limit(2048), PAGE_BYTES / 2048);
        // Records near the model's largest: never below the first page.
        assert_eq!(grown_limit(60_000), DEFAULT_PAGE_SIZE);
        assert_eq!(grown_limit(0), MAX_PAGE_SIZE);
    }
}
