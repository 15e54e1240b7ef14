//! The balancer as a tower [`Service`]: the same picks, ejection and
//! retries for hyper, tonic or any tower stack (feature `tower`).
//!
//! [`BalanceLayer`] wraps a *maker*, a closure from an [`Instance`] to the
//! service that talks to it (a tonic `Channel` to `instance.authority()`,
//! a hyper client bound to one address...), into a [`Balanced`] service.
//! Each call:
//!
//! | step                      | what happens                                                                 |
//! |---------------------------|------------------------------------------------------------------------------|
//! | pick                      | [`Balancer::acquire`]: the strategy, ejection, zone preference, the wait for a first instance |
//! | inner service             | made once per instance id by the maker and cached; made again when the instance's registration changes, dropped when it leaves the live set |
//! | call                      | the inner service's `poll_ready`, then `call`                                |
//! | report                    | the [`Policy`] sorts the result: a success (with the latency), a [`FailureKind`] ([`Pick::failure`]), or an overload ([`Pick::overloaded`]) |
//! | retry                     | on a failure, on another instance (never one this call tried), when the policy gave a copy of the request ([`Policy::clone_request`]), attempts remain and the [`RetryBudget`] allows it |
//!
//! Why a feature of the balancer and not a crate of its own (as the HTTP
//! client is): tower's `Service` and `Layer` carry no protocol, only the
//! shape of a call, so nothing of HTTP or gRPC enters the balancer; the
//! protocol's rules (which answers are failures, which requests may be
//! repeated) come from the caller's [`Policy`]. The feature only adds
//! `tower` without default features (its `Service` and `Layer` traits).
//! `registry::ServiceDiscover` remains for users of tower's own balancers;
//! this service is for those who want this crate's ejection, retry budget
//! and metrics.
//!
//! The per-instance cache is why the maker is called with the whole
//! [`Instance`]: one tonic `Channel` (one HTTP/2 connection) per instance,
//! reused by every call, rather than one per call.
//!
//! ```
//! use std::convert::Infallible;
//! use std::time::Duration;
//! use balancer::tower::{BalanceLayer, Policy};
//! use balancer::{Balancer, FailureKind};
//! use registry::{Instance, MemoryRegistry, Registrar};
//! use tower::{Layer, Service};
//!
//! /// Every answer is a success; requests (`&'static str`) may be repeated.
//! #[derive(Clone)]
//! struct Repeatable;
//! impl Policy<&'static str, String, Infallible> for Repeatable {
//!     fn clone_request(&self, request: &&'static str) -> Option<&'static str> {
//!         Some(*request)
//!     }
//!     fn classify(&self, _: &Result<String, Infallible>) -> Option<FailureKind> {
//!         None
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let registry = MemoryRegistry::new(Duration::from_secs(10));
//! let _a = registry.register(Instance::new("hello", "a", "127.0.0.1", 8081)).await?;
//! let balancer = Balancer::new(registry, "hello", Default::default())?;
//! // One service per instance: here it answers with the instance's id.
//! let make = |instance: &Instance| {
//!     let id = instance.id.clone();
//!     tower::service_fn(move |request: &'static str| {
//!         let answer = format!("{request} from {id}");
//!         async move { Ok::<_, Infallible>(answer) }
//!     })
//! };
//! let mut hello = BalanceLayer::new(balancer, Repeatable).layer(make);
//! std::future::poll_fn(|cx| hello.poll_ready(cx)).await?;
//! assert_eq!(hello.call("hi").await?, "hi from a");
//! # Ok(())
//! # }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use ::tower::{Layer, Service};
use registry::Instance;

use crate::{Balancer, FailureKind, Pick, RetryBudget};

/// What the inner services' errors and this service's own errors are
/// boxed into, as tonic and hyper's tower stacks expect.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The default number of tries per call, the first one included.
pub const DEFAULT_ATTEMPTS: u32 = 3;

/// The protocol's rules, which the balancer cannot know: which results are
/// failures of the instance, and which requests may be sent again.
///
/// Implemented by the caller for its request, response and error types
/// (see the [module docs](self) for an example, and the gRPC example
/// package for tonic's statuses).
pub trait Policy<Req, Res, E> {
    /// A copy of `request` for a retry on another instance, or `None` when
    /// it must not be repeated (it may have side effects, or its body is a
    /// stream that cannot be copied). Called before each try that may be
    /// followed by another one. The default never retries.
    fn clone_request(&self, request: &Req) -> Option<Req> {
        let _ = request;
        None
    }

    /// How a try went: `None` when the instance did its job (whatever the
    /// answer means to the caller: a "not found" is a success of the
    /// instance), or the [`FailureKind`] to report.
    /// [`FailureKind::Overloaded`] backs the instance off without counting
    /// towards its ejection.
    fn classify(&self, result: &Result<Res, E>) -> Option<FailureKind>;
}

/// Why a balanced call failed before any inner service answered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BalanceError {
    /// No instance could be picked: see [`crate::Error`].
    #[error(transparent)]
    Balancer(#[from] crate::Error),
    /// Every live instance was tried by this call (the set shrank while
    /// it retried): nowhere left to send it.
    #[error("every instance of service {service:?} was tried by this call")]
    AllTried {
        /// The service.
        service: String,
    },
    /// The inner service of an instance was not ready to take the call
    /// (its `poll_ready` failed).
    #[error("the service for instance {instance:?} is not ready: {source}")]
    NotReady {
        /// The instance's id.
        instance: String,
        /// What the inner service said.
        #[source]
        source: BoxError,
    },
}

/// Makes [`Balanced`] services: a tower [`Layer`] over a maker (a closure
/// from [`Instance`] to a service), so that it fits a `ServiceBuilder`.
#[derive(Clone)]
pub struct BalanceLayer<P> {
    balancer: Balancer,
    policy: P,
    attempts: u32,
    budget: Arc<RetryBudget>,
}

impl<P> fmt::Debug for BalanceLayer<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BalanceLayer")
            .field("service", &self.balancer.service())
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl<P> BalanceLayer<P> {
    /// Balances over `balancer`'s live set with `policy`, at most
    /// [`DEFAULT_ATTEMPTS`] tries per call, retries limited by a
    /// [`RetryBudget`] of 20 % of the calls plus 10 per second (the HTTP
    /// client's defaults).
    pub fn new(balancer: Balancer, policy: P) -> Self {
        BalanceLayer {
            balancer,
            policy,
            attempts: DEFAULT_ATTEMPTS,
            budget: Arc::new(RetryBudget::new(20, 10)),
        }
    }

    /// At most `attempts` tries per call, the first included (at least 1:
    /// zero counts as one). One means no retries.
    pub fn attempts(mut self, attempts: u32) -> Self {
        self.attempts = attempts.max(1);
        self
    }

    /// The budget that limits retries, shared with other clients of the
    /// same service when they should retry out of one budget.
    pub fn retry_budget(mut self, budget: Arc<RetryBudget>) -> Self {
        self.budget = budget;
        self
    }
}

impl<M, P: Clone> Layer<M> for BalanceLayer<P> {
    type Service = Balanced<M, P>;

    fn layer(&self, make: M) -> Balanced<M, P> {
        Balanced {
            inner: Arc::new(Inner {
                balancer: self.balancer.clone(),
                make,
                policy: self.policy.clone(),
                attempts: self.attempts,
                budget: self.budget.clone(),
                cache: Mutex::default(),
            }),
        }
    }
}

/// A tower [`Service`] that sends each call to an instance picked by the
/// balancer, through that instance's cached inner service, reports how it
/// went and retries elsewhere when allowed: see the [module docs](self).
///
/// Cheap to clone; clones share the cache of inner services.
///
/// Its error is a [`BoxError`]: the last try's own error (a tonic
/// `Status`...) when every allowed try failed, or a [`BalanceError`] when
/// no instance could be picked; `downcast_ref` tells them apart. A last
/// try the policy called a failure but that still answered (an `Ok` it
/// classified as a failure) is returned as that `Ok`.
pub struct Balanced<M, P> {
    inner: Arc<Inner<M, P>>,
}

impl<M, P> Clone for Balanced<M, P> {
    fn clone(&self) -> Self {
        Balanced {
            inner: self.inner.clone(),
        }
    }
}

impl<M, P> fmt::Debug for Balanced<M, P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Balanced")
            .field("service", &self.inner.balancer.service())
            .field("attempts", &self.inner.attempts)
            .finish_non_exhaustive()
    }
}

/// An inner service with the registration it was made for, its type
/// erased (the layer is built before the maker's service type is known).
type Cached = (Instance, Box<dyn std::any::Any + Send>);

struct Inner<M, P> {
    balancer: Balancer,
    make: M,
    policy: P,
    attempts: u32,
    budget: Arc<RetryBudget>,
    /// The inner service of each instance, with the registration it was
    /// made for.
    cache: Mutex<HashMap<String, Cached>>,
}

impl<M, P> Balanced<M, P> {
    /// The balancer calls are spread by.
    pub fn balancer(&self) -> &Balancer {
        &self.inner.balancer
    }
}

impl<M, P, S> Inner<M, P>
where
    M: Fn(&Instance) -> S,
    S: Clone + Send + 'static,
{
    /// The inner service for `pick`'s instance: the cached one if it was
    /// made for the same registration, a new one otherwise. Entries of
    /// instances that left the live set are dropped on the way.
    fn service_for(&self, pick: &Pick) -> S {
        let instance = pick.instance();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((made_for, service)) = cache.get(&instance.id) {
            if made_for == instance {
                if let Some(service) = service.downcast_ref::<S>() {
                    return service.clone();
                }
            }
        }
        let live = self.balancer.instances();
        cache.retain(|id, _| live.iter().any(|i| &i.id == id));
        let service = (self.make)(instance);
        cache.insert(
            instance.id.clone(),
            (instance.clone(), Box::new(service.clone())),
        );
        service
    }
}

impl<M, P, S, Req> Service<Req> for Balanced<M, P>
where
    M: Fn(&Instance) -> S + Send + Sync + 'static,
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send,
    P: Policy<Req, S::Response, S::Error> + Send + Sync + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    /// Always ready: the wait for an instance happens in the call, bounded
    /// by the balancer's wait timeout.
    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let inner = self.inner.clone();
        Box::pin(async move { inner.send(request).await })
    }
}

impl<M, P> Inner<M, P> {
    async fn send<S, Req>(&self, request: Req) -> Result<S::Response, BoxError>
    where
        M: Fn(&Instance) -> S,
        S: Service<Req> + Clone + Send + 'static,
        S::Error: Into<BoxError>,
        P: Policy<Req, S::Response, S::Error>,
    {
        let call_started = std::time::Instant::now();
        let metrics = self.balancer.requests();
        self.budget.deposit();
        let mut tried: Vec<String> = Vec::new();
        let mut request = Some(request);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(this_try) = request.take() else {
                unreachable!("every try starts with a request");
            };
            let pick = match self.balancer.acquire(&tried).await {
                Ok(Some(pick)) => pick,
                // Unreachable on the first try (nothing tried yet); later
                // tries only start when an untried instance may exist.
                Ok(None) => {
                    metrics.failed();
                    return Err(BalanceError::AllTried {
                        service: self.balancer.service().to_owned(),
                    }
                    .into());
                }
                Err(error) => {
                    metrics.no_instance();
                    return Err(BalanceError::Balancer(error).into());
                }
            };
            if attempt < self.attempts {
                request = self.policy.clone_request(&this_try);
            }
            let mut service = self.service_for(&pick);
            let started = pick.picked_at();
            if let Err(error) = poll_fn(|cx| service.poll_ready(cx)).await {
                let instance = pick.instance().id.clone();
                pick.failure(FailureKind::Unreachable, started.elapsed());
                metrics.failed();
                return Err(BalanceError::NotReady {
                    instance,
                    source: error.into(),
                }
                .into());
            }
            let result = service.call(this_try).await;
            let took = started.elapsed();
            let Some(kind) = self.policy.classify(&result) else {
                pick.success(took);
                metrics.ok(call_started.elapsed());
                return result.map_err(Into::into);
            };
            let instance = pick.instance().id.clone();
            tracing::warn!(service = %self.balancer.service(), instance = %instance,
                addr = %pick.authority(), attempt, kind = %kind, "try failed");
            if kind == FailureKind::Overloaded {
                pick.overloaded(None);
            } else {
                pick.failure(kind, took);
            }
            tried.push(instance);
            let others_left = self
                .balancer
                .instances()
                .iter()
                .any(|i| !tried.contains(&i.id));
            if request.is_none() || !others_left {
                metrics.failed();
                return result.map_err(Into::into);
            }
            if !self.budget.withdraw() {
                metrics.budget_exhausted();
                metrics.failed();
                return result.map_err(Into::into);
            }
            metrics.retry();
        }
    }
}
