//! Leader election through a `coordination.k8s.io/v1` Lease, so that only one replica
//! reconciles at a time.
//!
//! The holder renews the Lease every third of its duration; a candidate takes it over
//! once it has seen the Lease unchanged for `leaseDurationSeconds` by its own monotonic
//! clock (client-go's `observedTime`): the holder's `renewTime` is stamped by the
//! holder's clock and never compared with the candidate's, so clock skew between nodes
//! cannot hand the Lease over while its holder still renews it. Updates use the Lease's
//! `resourceVersion`, so two candidates can never both win the same round.
//!
//! No overlap: the holder counts itself leader only until `renew_deadline` (shorter
//! than the lease, as client-go's 10 s of 15 s) after the start of its last successful
//! renewal, on the monotonic clock. Past it, reconciles do nothing and the process
//! gives up, before any candidate may take over: even a leader that was paused
//! (SIGSTOP, a frozen node) stops acting the moment it runs again.

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

use crate::error::{Error, Result};

/// Settings of the election.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (its pod name).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
    /// How long after its last successful renewal the holder still acts as leader;
    /// shorter than `lease_duration`.
    pub renew_deadline: Duration,
}

impl LeaseSettings {
    /// The renew deadline client-go uses for a lease of this length: two thirds.
    pub fn default_renew_deadline(lease_duration: Duration) -> Duration {
        lease_duration * 2 / 3
    }
}

/// What a candidate should do with the Lease as it is now (pure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Held by us: renew it.
    Renew,
    /// Free or expired: take it.
    Acquire,
    /// Held by someone else and still valid: wait.
    Wait,
}

/// A reading of this replica's clocks: the wall clock only stamps what it writes into
/// the Lease; the monotonic clock times other holders.
#[derive(Debug, Clone, Copy)]
pub struct Now {
    /// Wall-clock time, written as `acquireTime` and `renewTime`.
    pub wall: Timestamp,
    /// Monotonic time, for when this replica saw the Lease change.
    pub monotonic: Instant,
}

impl Now {
    /// The clocks as they read now.
    pub fn read() -> Self {
        Now {
            wall: Timestamp::now(),
            monotonic: Instant::now(),
        }
    }
}

/// What this replica last saw of the Lease and when, by its own monotonic clock.
#[derive(Debug, Default)]
pub struct Observer {
    last: Option<Sighting>,
}

/// One version of the Lease as seen at `at`.
#[derive(Debug, Clone)]
struct Sighting {
    resource_version: Option<String>,
    spec: Option<LeaseSpec>,
    at: Instant,
}

impl Observer {
    /// Notes the Lease as read at `now` and decides whether `identity` may hold it.
    /// Another holder's Lease is timed as client-go's leaderelection does: from when
    /// this replica last saw it change (its `resourceVersion` or its spec), plus
    /// `leaseDurationSeconds`, on this replica's monotonic clock. The holder's
    /// `renewTime` is never compared with the local clock, so a candidate whose clock
    /// runs ahead does not take a Lease that is being renewed.
    pub fn decide(&mut self, lease: Option<&Lease>, identity: &str, now: Now) -> Decision {
        let Some(lease) = lease else {
            self.last = None;
            return Decision::Acquire;
        };
        let spec = lease.spec.as_ref();
        let seen_at = self.note(lease, now.monotonic);
        match spec.and_then(|s| s.holder_identity.as_deref()) {
            Some(holder) if holder == identity => Decision::Renew,
            None | Some("") => Decision::Acquire,
            Some(_) => {
                let seconds = spec
                    .and_then(|s| s.lease_duration_seconds)
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(15);
                if now.monotonic.saturating_duration_since(seen_at) > Duration::from_secs(seconds) {
                    Decision::Acquire
                } else {
                    Decision::Wait
                }
            }
        }
    }

    /// Notes a Lease this replica wrote itself (`now`: when it sent the write).
    pub fn wrote(&mut self, lease: &Lease, now: Now) {
        self.last = Some(Sighting {
            resource_version: lease.metadata.resource_version.clone(),
            spec: lease.spec.clone(),
            at: now.monotonic,
        });
    }

    /// Records `lease` as seen at `at` unless it is the version seen last; returns when
    /// this version was first seen.
    fn note(&mut self, lease: &Lease, at: Instant) -> Instant {
        let same = self.last.as_ref().is_some_and(|last| {
            last.resource_version == lease.metadata.resource_version && last.spec == lease.spec
        });
        if !same {
            self.last = Some(Sighting {
                resource_version: lease.metadata.resource_version.clone(),
                spec: lease.spec.clone(),
                at,
            });
        }
        self.last.as_ref().map_or(at, |last| last.at)
    }
}

/// A candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// Until when this replica may act as leader (monotonic clock).
    valid_until: std::sync::Mutex<Option<std::time::Instant>>,
    /// What this replica last saw of the Lease, and when.
    observer: std::sync::Mutex<Observer>,
}

impl Elector {
    /// A candidate using `client`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            valid_until: std::sync::Mutex::new(None),
            observer: std::sync::Mutex::new(Observer::default()),
        }
    }

    /// Whether this replica may act as leader now: it holds the Lease and renewed it
    /// less than `renew_deadline` ago.
    pub fn leading(&self) -> bool {
        self.valid_until
            .lock()
            .ok()
            .and_then(|v| *v)
            .is_some_and(|until| std::time::Instant::now() < until)
    }

    /// One round that counts toward [`Elector::leading`]: the deadline runs from when
    /// the request was sent, not from when its answer came.
    async fn hold(&self) -> Result<bool> {
        let sent = std::time::Instant::now();
        let held = self.try_hold().await?;
        if let Ok(mut until) = self.valid_until.lock() {
            *until = held.then(|| sent + self.settings.renew_deadline);
        }
        Ok(held)
    }

    fn spec(&self, previous: Option<&LeaseSpec>, now: Timestamp, acquire: bool) -> LeaseSpec {
        let transitions = previous.and_then(|s| s.lease_transitions).unwrap_or(0);
        LeaseSpec {
            holder_identity: Some(self.settings.identity.clone()),
            lease_duration_seconds: Some(
                i32::try_from(self.settings.lease_duration.as_secs()).unwrap_or(15),
            ),
            acquire_time: if acquire {
                Some(MicroTime(now))
            } else {
                previous.and_then(|s| s.acquire_time.clone())
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(if acquire && previous.is_some() {
                transitions + 1
            } else {
                transitions
            }),
            ..LeaseSpec::default()
        }
    }

    /// One round: true when this replica holds the Lease afterwards.
    pub async fn try_hold(&self) -> Result<bool> {
        let name = &self.settings.name;
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("reading Lease {name}")))?;
        // Read after the answer: the time this replica saw this version of the Lease.
        let now = Now::read();
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, now.wall, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.wrote(&created, now);
                    Ok(true)
                }
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::kube(format!("creating Lease {name}"))(e)),
            };
        };
        let decision = match self.observer.lock() {
            Ok(mut observer) => observer.decide(Some(&lease), &self.settings.identity, now),
            // A poisoned observer cannot time anyone: take nothing.
            Err(_) => Decision::Wait,
        };
        if decision == Decision::Wait {
            return Ok(false);
        }
        lease.spec = Some(self.spec(lease.spec.as_ref(), now.wall, decision == Decision::Acquire));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(written) => {
                self.wrote(&written, now);
                Ok(true)
            }
            // Someone else wrote it first (resourceVersion changed): not ours this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(format!("updating Lease {name}"))(e)),
        }
    }

    fn wrote(&self, lease: &Lease, now: Now) {
        if let Ok(mut observer) = self.observer.lock() {
            observer.wrote(lease, now);
        }
    }

    /// Waits until this replica holds the Lease.
    pub async fn acquire(&self) {
        let mut announced = false;
        loop {
            match self.hold().await {
                Ok(true) => {
                    info!(lease = %self.settings.name, identity = %self.settings.identity, "became the leader");
                    return;
                }
                Ok(false) => {
                    if !announced {
                        info!(lease = %self.settings.name, "another replica leads; waiting");
                        announced = true;
                    }
                }
                Err(error) => warn!(%error, "leader election"),
            }
            tokio::time::sleep(self.retry_period()).await;
        }
    }

    fn retry_period(&self) -> Duration {
        (self.settings.lease_duration / 3).max(Duration::from_secs(1))
    }

    /// Renews the Lease until a renewal fails to come within `renew_deadline` (or the
    /// Lease was taken), then returns: the caller must stop reconciling. Checks the
    /// deadline every 100 ms, so that a replica that was paused past it notices at once.
    pub async fn keep(&self) {
        let mut next_renewal = tokio::time::Instant::now() + self.retry_period();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if !self.leading() {
                warn!(lease = %self.settings.name, deadline = ?self.settings.renew_deadline, "no renewal of the Lease within the renew deadline: no longer leading");
                return;
            }
            if tokio::time::Instant::now() < next_renewal {
                continue;
            }
            next_renewal = tokio::time::Instant::now() + self.retry_period();
            let renewal = tokio::time::timeout(self.settings.renew_deadline, self.hold()).await;
            match renewal {
                Ok(Ok(true)) => {}
                Ok(Ok(false)) => {
                    warn!(lease = %self.settings.name, "the Lease was taken by another replica");
                    return;
                }
                Ok(Err(error)) => warn!(%error, "renewing the Lease"),
                Err(_) => warn!("renewing the Lease took longer than the renew deadline"),
            }
        }
    }

    /// Gives the Lease up so that another replica can take over at once.
    pub async fn release(&self) {
        let name = &self.settings.name;
        let Ok(Some(mut lease)) = self.api.get_opt(name).await else {
            return;
        };
        let ours = lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(self.settings.identity.as_str());
        if !ours {
            return;
        }
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
        }
        if let Err(error) = self.api.replace(name, &PostParams::default(), &lease).await {
            warn!(%error, "releasing the Lease");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    /// The Lease as `holder` wrote it at its wall-clock second `renewed`, as version
    /// `version`.
    fn lease(holder: &str, renewed: i64, version: u32) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("outbox-operator".into()),
                resource_version: Some(version.to_string()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some(holder.into()),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(at(renewed))),
                ..LeaseSpec::default()
            }),
        }
    }

    /// A candidate's clocks `seconds` after `start`, its wall clock `skew` seconds off
    /// the holder's (whose wall clock reads 1000 at `start`).
    fn candidate_now(start: Instant, seconds: u64, skew: i64) -> Now {
        let seconds_i64 = i64::try_from(seconds).unwrap_or(i64::MAX);
        Now {
            wall: at(1000 + seconds_i64 + skew),
            monotonic: start + Duration::from_secs(seconds),
        }
    }

    #[test]
    fn free_or_missing_lease_is_acquired() {
        let now = Now::read();
        assert_eq!(
            Observer::default().decide(None, "a", now),
            Decision::Acquire
        );
        let free = Lease {
            spec: Some(LeaseSpec::default()),
            ..Lease::default()
        };
        assert_eq!(
            Observer::default().decide(Some(&free), "a", now),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            Observer::default().decide(Some(&lease("a", 99, 1)), "a", Now::read()),
            Decision::Renew
        );
    }

    #[test]
    fn a_candidate_whose_clock_runs_60_s_ahead_does_not_take_a_lease_the_holder_keeps_renewing() {
        let start = Instant::now();
        let mut candidate = Observer::default();
        // The holder renews every 5 s by its own clock; the candidate looks every 2 s
        // for two minutes with its wall clock a minute ahead.
        for seconds in (0..120).step_by(2) {
            let renewed = 1000 + i64::from(u32::try_from(seconds / 5 * 5).unwrap_or(0));
            let version = u32::try_from(seconds / 5).unwrap_or(0) + 1;
            let now = candidate_now(start, seconds, 60);
            assert_eq!(
                candidate.decide(Some(&lease("b", renewed, version)), "a", now),
                Decision::Wait,
                "taken at second {seconds} while the holder renews"
            );
        }
    }

    #[test]
    fn a_lease_whose_holder_stopped_renewing_is_taken_after_lease_duration_of_local_observation() {
        let start = Instant::now();
        let mut candidate = Observer::default();
        // The holder's last renewal was long ago by any clock (it died before this
        // candidate started): the candidate still times the Lease from its own first
        // look, as the holder's clock may run behind its own.
        let stale = lease("b", 500, 7);
        for seconds in [0, 5, 10, 15] {
            assert_eq!(
                candidate.decide(Some(&stale), "a", candidate_now(start, seconds, 0)),
                Decision::Wait,
                "taken {seconds} s after the first look"
            );
        }
        assert_eq!(
            candidate.decide(Some(&stale), "a", candidate_now(start, 16, 0)),
            Decision::Acquire
        );
        // A renewal seen meanwhile starts the count again.
        let mut candidate = Observer::default();
        assert_eq!(
            candidate.decide(Some(&stale), "a", candidate_now(start, 0, 0)),
            Decision::Wait
        );
        let renewed = lease("b", 510, 8);
        assert_eq!(
            candidate.decide(Some(&renewed), "a", candidate_now(start, 14, 0)),
            Decision::Wait
        );
        assert_eq!(
            candidate.decide(Some(&renewed), "a", candidate_now(start, 20, 0)),
            Decision::Wait,
            "timed from the renewal seen at 14 s, not from the first look"
        );
        assert_eq!(
            candidate.decide(Some(&renewed), "a", candidate_now(start, 30, 0)),
            Decision::Acquire
        );
    }
}
