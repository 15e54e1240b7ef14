//! The registrar core's logic, under paused time, against a scripted
//! backend: what the state machine does, not what a registry does (every
//! backend still passes the conformance suite on real servers).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::core::Key;
use super::{Backend, Found, Record, Registrar, Renewal};
use crate::error::{Error, Result};
use crate::model::Instance;
use crate::traits::RegistrationState;

const TTL: Duration = Duration::from_secs(3);
const TIMEOUT: Duration = Duration::from_secs(5);

/// The scripted registry: what is stored, and what the next calls do.
#[derive(Debug, Default)]
struct World {
    /// Leases opened so far; the current one is the last, unless lost.
    opened: u32,
    current: Option<u32>,
    /// key -> (owner, lease, instance)
    records: BTreeMap<Key, (String, u32, Instance)>,
    /// Ids held by another registrar.
    foreign: BTreeMap<Key, String>,
    /// Every call, in order, with the time it started.
    calls: Vec<(Instant, String)>,
    /// Every call fails as if the registry were unreachable.
    down: bool,
    /// The next N opens fail.
    open_fails: u32,
    /// Puts wait this long before doing anything.
    put_delay: Duration,
    /// The next put finds the lease gone (and the lease is gone).
    lose_lease_on_put: bool,
}

#[derive(Debug, Clone, Default)]
struct Scripted {
    world: Arc<Mutex<World>>,
}

impl Scripted {
    fn world(&self) -> std::sync::MutexGuard<'_, World> {
        self.world.lock().unwrap()
    }

    fn log(&self, call: String) {
        self.world().calls.push((Instant::now(), call));
    }

    fn down(&self) -> Error {
        Error::unavailable("scripted", "nowhere", "the scripted registry is down")
    }

    fn calls(&self, prefix: &str) -> Vec<Instant> {
        self.world()
            .calls
            .iter()
            .filter(|(_, c)| c.starts_with(prefix))
            .map(|(t, _)| *t)
            .collect()
    }

    fn stored(&self, id: &str) -> Option<(String, u32, Instance)> {
        self.world()
            .records
            .get(&("lorem".to_owned(), id.to_owned()))
            .cloned()
    }

    /// The lease is gone on the server: its records with it.
    fn lose_lease(&self) {
        let mut world = self.world();
        let current = world.current.take();
        world
            .records
            .retain(|_, (_, lease, _)| Some(*lease) != current);
    }
}

#[async_trait]
impl Backend for Scripted {
    type Lease = u32;
    const NAME: &'static str = "scripted";

    async fn open(&self) -> Result<u32> {
        self.log("open".into());
        let mut world = self.world();
        if world.down {
            drop(world);
            return Err(self.down());
        }
        if world.open_fails > 0 {
            world.open_fails -= 1;
            drop(world);
            return Err(self.down());
        }
        world.opened += 1;
        world.current = Some(world.opened);
        Ok(world.opened)
    }

    async fn put(&self, lease: &u32, record: &Record) -> Result<()> {
        self.log(format!("put {}", record.instance.id));
        let delay = self.world().put_delay;
        tokio::time::sleep(delay).await;
        let mut world = self.world();
        if world.down {
            drop(world);
            return Err(self.down());
        }
        if std::mem::take(&mut world.lose_lease_on_put) {
            drop(world);
            self.lose_lease();
            return Err(Error::LeaseLost {
                backend: "scripted",
                reason: "scripted loss".into(),
            });
        }
        if world.current != Some(*lease) {
            return Err(Error::LeaseLost {
                backend: "scripted",
                reason: "unknown lease".into(),
            });
        }
        let key = record.key();
        if let Some(holder) = world.foreign.get(&key) {
            return Err(Error::AlreadyRegistered {
                backend: "scripted",
                service: key.0,
                id: key.1,
                holder: holder.clone(),
            });
        }
        world.records.insert(
            key,
            (record.owner.to_string(), *lease, record.instance.clone()),
        );
        Ok(())
    }

    async fn delete(&self, _lease: &u32, record: &Record) -> Result<()> {
        self.log(format!("delete {}", record.instance.id));
        let mut world = self.world();
        if world.down {
            drop(world);
            return Err(self.down());
        }
        let key = record.key();
        if world
            .records
            .get(&key)
            .is_some_and(|(owner, _, _)| **owner == *record.owner)
        {
            world.records.remove(&key);
        }
        Ok(())
    }

    async fn abandon(&self, _lease: &u32, record: &Record) -> Result<()> {
        self.log(format!("abandon {}", record.instance.id));
        let mut world = self.world();
        if world.down {
            drop(world);
            return Err(self.down());
        }
        // Lease 0: nobody renews it.
        if let Some(entry) = world.records.get_mut(&record.key()) {
            entry.1 = 0;
        }
        Ok(())
    }

    async fn renew(&self, lease: &u32, records: &[Record]) -> Result<Renewal> {
        let ids: Vec<&str> = records.iter().map(|r| r.instance.id.as_str()).collect();
        self.log(format!("renew {}", ids.join(",")));
        let world = self.world();
        if world.down {
            drop(world);
            return Err(self.down());
        }
        if world.current != Some(*lease) {
            return Ok(Renewal::Lost("the scripted lease is gone".into()));
        }
        Ok(Renewal::Alive)
    }

    async fn close(&self, lease: u32) {
        self.log(format!("close {lease}"));
        self.lose_lease();
    }

    async fn verify(&self, lease: &u32, records: &[Record]) -> Result<Vec<Found>> {
        self.log("verify".into());
        let world = self.world();
        if world.down {
            drop(world);
            return Err(self.down());
        }
        Ok(records
            .iter()
            .map(|record| {
                let key = record.key();
                if let Some(holder) = world.foreign.get(&key) {
                    return Found::Held {
                        holder: holder.clone(),
                    };
                }
                match world.records.get(&key) {
                    None => Found::Missing,
                    Some((owner, on, instance))
                        if **owner == *record.owner
                            && on == lease
                            && *instance == record.instance =>
                    {
                        Found::Ours
                    }
                    Some(_) => Found::Changed,
                }
            })
            .collect())
    }
}

fn lorem(id: &str, port: u16) -> Instance {
    Instance::new("lorem", id, "127.0.0.1", port)
}

fn registrar() -> (Registrar<Scripted>, Scripted) {
    let script = Scripted::default();
    (Registrar::new(script.clone(), TTL, TIMEOUT), script)
}

/// Lets the registrar task and its calls run (time is paused: sleeping
/// advances it only once every task is idle).
async fn settle(time: Duration) {
    tokio::time::sleep(time).await;
}

#[tokio::test(start_paused = true)]
async fn registers_renews_and_deregisters() {
    let (registrar, script) = registrar();
    let registration = registrar.register(lorem("a", 1)).await.unwrap();
    assert_eq!(script.stored("a").unwrap().1, 1, "on the first lease");
    assert_eq!(
        script.stored("a").unwrap().0,
        registrar.owner(),
        "with our token"
    );
    settle(TTL * 2).await;
    let renewals = script.calls("renew");
    assert!(renewals.len() >= 5, "renewed every TTL/3: {renewals:?}");
    assert!(
        !script.calls("verify").is_empty(),
        "checked about once per TTL"
    );
    assert_eq!(
        *registration.state().borrow(),
        RegistrationState::Registered
    );
    registration.deregister().await.unwrap();
    assert!(script.stored("a").is_none());
}

#[tokio::test(start_paused = true)]
async fn a_lease_lost_in_the_middle_of_a_register_is_replaced_and_the_register_succeeds() {
    let (registrar, script) = registrar();
    script.world().lose_lease_on_put = true;
    let registration = registrar.register(lorem("a", 1)).await.unwrap();
    let (_, lease, _) = script.stored("a").expect("registered");
    assert_eq!(lease, 2, "put on the new lease");
    assert_eq!(script.calls("open").len(), 2);
    assert_eq!(
        *registration.state().borrow(),
        RegistrationState::Registered
    );
}

#[tokio::test(start_paused = true)]
async fn a_register_waits_for_the_lease_being_reestablished_within_the_timeout() {
    let (registrar, script) = registrar();
    let _a = registrar.register(lorem("a", 1)).await.unwrap();
    // The lease is lost and the registry refuses new leases for a while.
    script.world().open_fails = 3;
    script.lose_lease();
    let started = Instant::now();
    settle(TTL / 3 + Duration::from_millis(10)).await;
    let b = registrar.register(lorem("b", 2)).await.unwrap();
    assert!(started.elapsed() < TIMEOUT, "{:?}", started.elapsed());
    assert_eq!(script.stored("b").unwrap().1, 2, "b on the new lease");
    assert_eq!(script.stored("a").unwrap().1, 2, "a put back on it too");
    assert_eq!(*b.state().borrow(), RegistrationState::Registered);

    // Down for longer than the timeout: a transient error, in time.
    script.world().down = true;
    script.lose_lease();
    settle(TTL).await;
    let started = Instant::now();
    let error = registrar.register(lorem("c", 3)).await.unwrap_err();
    assert!(error.is_transient(), "{error}");
    assert!(started.elapsed() <= TIMEOUT + Duration::from_millis(10));
    // Back: everything live is registered again, c was undone (never put).
    script.world().down = false;
    settle(Duration::from_secs(10)).await;
    assert_eq!(script.stored("a").unwrap().1, 3);
    assert_eq!(script.stored("b").unwrap().1, 3);
    assert!(script.stored("c").is_none(), "the caller gave up on c");
}

#[tokio::test(start_paused = true)]
async fn a_caller_that_gives_up_leaves_nothing_behind() {
    let (registrar, script) = registrar();
    script.world().put_delay = TIMEOUT + Duration::from_secs(1);
    let error = registrar.register(lorem("a", 1)).await.unwrap_err();
    assert!(matches!(error, Error::Timeout { .. }), "{error}");
    settle(Duration::from_secs(3)).await;
    assert!(script.stored("a").is_none(), "undone after the late put");
    assert_eq!(script.calls("delete a").len(), 1);

    // A replacement whose caller gives up puts back the one in force.
    script.world().put_delay = Duration::ZERO;
    let first = registrar.register(lorem("b", 1)).await.unwrap();
    script.world().put_delay = TIMEOUT + Duration::from_secs(1);
    registrar.register(lorem("b", 2)).await.unwrap_err();
    script.world().put_delay = Duration::ZERO;
    settle(Duration::from_secs(3)).await;
    assert_eq!(script.stored("b").unwrap().2.port, 1, "the first is back");
    assert_eq!(*first.state().borrow(), RegistrationState::Registered);
}

#[tokio::test(start_paused = true)]
async fn deletes_that_fail_during_an_outage_are_retried_after_it() {
    let (registrar, script) = registrar();
    let a = registrar.register(lorem("a", 1)).await.unwrap();
    script.world().down = true;
    assert!(a.deregister().await.unwrap_err().is_transient());
    assert!(script.stored("a").is_some(), "not deleted yet");
    settle(TTL).await;
    assert!(script.stored("a").is_some(), "still down");
    script.world().down = false;
    settle(TTL).await;
    assert!(
        script.stored("a").is_none(),
        "deleted once it answers again"
    );
    let renewals = script.calls("renew").len();
    settle(TTL * 2).await;
    assert_eq!(
        script.calls("renew").len(),
        renewals,
        "nothing left to renew"
    );
}

#[tokio::test(start_paused = true)]
async fn everything_live_is_registered_again_after_a_loss() {
    let (registrar, script) = registrar();
    let a = registrar.register(lorem("a", 1)).await.unwrap();
    let b = registrar.register(lorem("b", 2)).await.unwrap();
    let mut state = a.state();
    script.lose_lease();
    settle(TTL / 3 + Duration::from_millis(100)).await;
    assert_eq!(script.stored("a").unwrap().1, 2);
    assert_eq!(script.stored("b").unwrap().1, 2);
    assert_eq!(*state.borrow_and_update(), RegistrationState::Registered);
    assert_eq!(*b.state().borrow(), RegistrationState::Registered);
    // A record removed by someone else comes back at the next check.
    script
        .world()
        .records
        .remove(&("lorem".to_owned(), "a".to_owned()));
    settle(TTL + TTL / 3).await;
    assert!(script.stored("a").is_some(), "restored");
}

#[tokio::test(start_paused = true)]
async fn backoff_is_bounded_while_the_registry_is_down() {
    let (registrar, script) = registrar();
    let _a = registrar.register(lorem("a", 1)).await.unwrap();
    // The loss is noticed at the next renewal, then the registry goes down.
    script.lose_lease();
    script.world().open_fails = u32::MAX;
    settle(Duration::from_secs(60)).await;
    let opens = script.calls("open");
    let gaps: Vec<Duration> = opens.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(gaps.len() >= 10, "kept retrying: {gaps:?}");
    assert!(
        gaps.iter().all(|g| *g <= Duration::from_secs(5)),
        "never more than 5 s apart: {gaps:?}"
    );
    assert!(
        gaps.iter().all(|g| *g >= Duration::from_millis(50)),
        "never a busy loop: {gaps:?}"
    );
    assert!(
        gaps.len() <= 60,
        "backed off: {} attempts in 60 s",
        gaps.len()
    );

    // Renewal failures (the lease itself alive) retry within TTL/3.
    let (registrar, script) = self::registrar();
    let _b = registrar.register(lorem("b", 1)).await.unwrap();
    script.world().down = true;
    let from = Instant::now();
    settle(Duration::from_secs(10)).await;
    let renewals: Vec<Instant> = script
        .calls("renew")
        .into_iter()
        .filter(|t| *t >= from)
        .collect();
    let gaps: Vec<Duration> = renewals.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(
        gaps.iter()
            .all(|g| *g <= TTL / 3 + Duration::from_millis(1)),
        "{gaps:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn abandon_stops_renewing_without_deleting() {
    let (registrar, script) = registrar();
    let a = registrar.register(lorem("a", 1)).await.unwrap();
    let _b = registrar.register(lorem("b", 2)).await.unwrap();
    a.abandon();
    settle(TTL).await;
    assert_eq!(script.calls("abandon a").len(), 1);
    assert!(script.calls("delete").is_empty());
    assert_eq!(script.stored("a").unwrap().1, 0, "left to expire");
    let last = script.world().calls.last().cloned().unwrap();
    assert!(
        script
            .world()
            .calls
            .iter()
            .filter(|(_, c)| c.starts_with("renew"))
            .all(|(t, c)| *t < last.0 - TTL / 2 || c == "renew b"),
        "a no longer renewed"
    );
}

#[tokio::test(start_paused = true)]
async fn an_id_held_by_another_registrar_is_refused_and_a_displaced_one_gives_way() {
    let (registrar, script) = registrar();
    let key = ("lorem".to_owned(), "a".to_owned());
    script
        .world()
        .foreign
        .insert(key.clone(), "pid9-other".into());
    let error = registrar.register(lorem("a", 1)).await.unwrap_err();
    assert!(
        matches!(&error, Error::AlreadyRegistered { holder, .. } if holder == "pid9-other"),
        "{error}"
    );
    assert!(error.is_transient());
    settle(TTL * 2).await;
    assert!(
        script.calls("delete").is_empty(),
        "never touches the other's record"
    );

    // Ours went away and another registrar took the id: give way.
    script.world().foreign.clear();
    let b = registrar.register(lorem("b", 1)).await.unwrap();
    script.world().foreign.insert(
        ("lorem".to_owned(), "b".to_owned()),
        "pid9-other".to_owned(),
    );
    settle(TTL * 2).await;
    assert_eq!(
        *b.state().borrow(),
        RegistrationState::Displaced {
            holder: "pid9-other".into()
        }
    );
    let puts = script.calls("put b").len();
    settle(TTL * 2).await;
    assert_eq!(script.calls("put b").len(), puts, "no tug-of-war");
}

#[tokio::test(start_paused = true)]
async fn operations_on_one_id_keep_their_order() {
    let (registrar, script) = registrar();
    script.world().put_delay = Duration::from_millis(100);
    let (a, b) = tokio::join!(
        registrar.register(lorem("a", 1)),
        registrar.register(lorem("a", 2))
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(script.stored("a").unwrap().2.port, 2, "the later one wins");
    // The replaced handle no longer removes the id.
    a.deregister().await.unwrap();
    assert_eq!(script.stored("a").unwrap().2.port, 2);
    assert_eq!(*b.state().borrow(), RegistrationState::Registered);
    let c = registrar.register(lorem("a", 3));
    let (c, removed) = tokio::join!(c, b.deregister());
    removed.unwrap();
    let _c = c.unwrap();
    assert_eq!(
        script.stored("a").unwrap().2.port,
        3,
        "issued after, lands after"
    );
}

#[tokio::test(start_paused = true)]
async fn a_registrar_dropped_right_after_an_abandon_lets_it_finish_before_closing() {
    let (registrar, script) = registrar();
    let a = registrar.register(lorem("a", 1)).await.unwrap();
    a.abandon();
    drop(registrar);
    settle(TTL).await;
    let calls: Vec<String> = script
        .world()
        .calls
        .iter()
        .map(|(_, c)| c.clone())
        .collect();
    let abandon = calls.iter().position(|c| c == "abandon a");
    let close = calls.iter().position(|c| c.starts_with("close"));
    assert!(
        abandon.is_some() && (close.is_none() || close > abandon),
        "the abandon moves the record off the lease before the lease is closed: {calls:?}"
    );
    assert_eq!(script.stored("a").unwrap().1, 0, "left to expire");

    // With nothing left, the lease is closed at once.
    let (registrar, script) = self::registrar();
    let b = registrar.register(lorem("b", 1)).await.unwrap();
    b.deregister().await.unwrap();
    drop(registrar);
    settle(TTL).await;
    assert!(
        script.calls("close").len() == 1,
        "{:?}",
        script.world().calls
    );
}
