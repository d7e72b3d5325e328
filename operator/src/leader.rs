//! Leader election through a `coordination.k8s.io/v1` Lease, so that only one replica
//! reconciles at a time.
//!
//! The holder renews the Lease every third of its duration; a candidate takes it over
//! when its `renewTime` is older than `leaseDurationSeconds`. Updates use the Lease's
//! `resourceVersion`, so two candidates can never both win the same round.
//!
//! No overlap: the holder counts itself leader only until `renew_deadline` (shorter
//! than the lease, as client-go's 10 s of 15 s) after the start of its last successful
//! renewal, on the monotonic clock. Past it, reconciles do nothing and the process
//! gives up, before any candidate may take over: even a leader that was paused
//! (SIGSTOP, a frozen node) stops acting the moment it runs again.

use std::time::Duration;

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

/// Decides from the Lease's spec whether `identity` may hold it at `now`.
pub fn decide(spec: Option<&LeaseSpec>, identity: &str, now: Timestamp) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(holder) if holder == identity => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let duration = i64::from(spec.lease_duration_seconds.unwrap_or(15));
            let renewed = spec
                .renew_time
                .as_ref()
                .map(|t| t.0.as_second())
                .unwrap_or(0);
            if now.as_second() - renewed > duration {
                Decision::Acquire
            } else {
                Decision::Wait
            }
        }
    }
}

/// A candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: LeaseSettings,
    /// Until when this replica may act as leader (monotonic clock).
    valid_until: std::sync::Mutex<Option<std::time::Instant>>,
}

impl Elector {
    /// A candidate using `client`.
    pub fn new(client: Client, settings: LeaseSettings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            valid_until: std::sync::Mutex::new(None),
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
        let now = Timestamp::now();
        let current = self
            .api
            .get_opt(name)
            .await
            .map_err(Error::kube(format!("reading Lease {name}")))?;
        let Some(mut lease) = current else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(None, now, true)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
                Err(e) => Err(Error::kube(format!("creating Lease {name}"))(e)),
            };
        };
        let decision = decide(lease.spec.as_ref(), &self.settings.identity, now);
        if decision == Decision::Wait {
            return Ok(false);
        }
        lease.spec = Some(self.spec(lease.spec.as_ref(), now, decision == Decision::Acquire));
        match self.api.replace(name, &PostParams::default(), &lease).await {
            Ok(_) => Ok(true),
            // Someone else wrote it first (resourceVersion changed): not ours this round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(Error::kube(format!("updating Lease {name}"))(e)),
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

    fn held_by(holder: &str, renewed: i64) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.into()),
            lease_duration_seconds: Some(15),
            renew_time: Some(MicroTime(at(renewed))),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn free_or_missing_lease_is_acquired() {
        assert_eq!(decide(None, "a", at(100)), Decision::Acquire);
        assert_eq!(
            decide(Some(&LeaseSpec::default()), "a", at(100)),
            Decision::Acquire
        );
    }

    #[test]
    fn own_lease_is_renewed() {
        assert_eq!(
            decide(Some(&held_by("a", 99)), "a", at(100)),
            Decision::Renew
        );
    }

    #[test]
    fn valid_foreign_lease_is_respected_and_expired_one_taken() {
        assert_eq!(
            decide(Some(&held_by("b", 90)), "a", at(100)),
            Decision::Wait
        );
        assert_eq!(
            decide(Some(&held_by("b", 80)), "a", at(100)),
            Decision::Acquire
        );
    }
}
