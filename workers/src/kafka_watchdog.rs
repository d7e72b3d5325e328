//! A watchdog for a Kafka client that stops reaching a broker which other clients reach.
//!
//! Since 2.10, librdkafka removes a broker's thread when the broker leaves the cluster
//! metadata and adds it back from a later metadata answer, re-bootstrapping when no
//! broker is left. After the testbed's only broker restarted, the fault matrix
//! (`make chaos`, `kafka-restart@sending`) caught a consumer that had kept no broker
//! connection at all: every request failed with "Broker transport failure" for minutes
//! and its group stopped, while a new client with the same settings reached the broker
//! at once (librdkafka 2.12.1; the re-bootstrap races are fixed upstream after it).
//!
//! The same happened to the relays of all three producers after a broker restart
//! while a LoadTest verified (`kafka-restart@verifying`).
//!
//! The watchdog looks every [`CHECK_EVERY`]: when the client cannot fetch metadata but a
//! fresh client can, for [`WEDGED_AFTER`] on end, the client is wedged.
//! - A consumer stops with [`Error::KafkaWedged`] so that it starts again with a new
//!   client (the Deployment restarts the container; nothing is lost: offsets are
//!   committed only after the acknowledgements are durable).
//! - The relay purges what its client holds and ends its session. The next session
//!   republishes from the watermark with a new client: duplicates, never gaps.
//!
//! When the fresh client fails too, Kafka is away, and that is an outage to wait out,
//! not a reason to restart.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;

use tracing::Instrument;

use crate::error::Error;
use crate::shutdown::{self, ShutdownSignal};

/// How often the watchdog looks.
pub const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long the client may fail while a fresh one succeeds before it counts as wedged.
pub const WEDGED_AFTER: Duration = Duration::from_secs(60);
/// How long one metadata request may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// What one look found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The client reaches the broker.
    Healthy,
    /// Neither the client nor a fresh one reaches it: Kafka is away.
    KafkaAway,
    /// The client fails while a fresh one succeeds, since this long (not yet too long).
    Suspect(Duration),
    /// The client failed while fresh ones succeeded for at least the limit.
    Wedged(Duration),
}

/// The watchdog's memory between looks (pure, so it is unit-tested).
#[derive(Debug, Clone)]
pub struct Watchdog {
    limit: Duration,
    suspect_since: Option<Instant>,
}

impl Watchdog {
    /// A watchdog that calls a client wedged after `limit`.
    pub fn new(limit: Duration) -> Watchdog {
        Watchdog {
            limit,
            suspect_since: None,
        }
    }

    /// One look at `now`: whether the client reached the broker, and (asked only when
    /// it did not) whether a fresh client did.
    pub fn observe(&mut self, client_ok: bool, fresh_ok: bool, now: Instant) -> Verdict {
        if client_ok {
            self.suspect_since = None;
            return Verdict::Healthy;
        }
        if !fresh_ok {
            self.suspect_since = None;
            return Verdict::KafkaAway;
        }
        let since = *self.suspect_since.get_or_insert(now);
        let lasted = now.saturating_duration_since(since);
        if lasted >= self.limit {
            Verdict::Wedged(lasted)
        } else {
            Verdict::Suspect(lasted)
        }
    }
}

/// Watches `client` (a probe: `Ok` when it fetched metadata) against fresh clients made
/// from `base`; returns the error to stop with once the client is wedged, or `None` on
/// shutdown.
pub async fn watch<F>(client: F, base: ClientConfig, mut shutdown: ShutdownSignal) -> Option<Error>
where
    F: Fn(Duration) -> rdkafka::error::KafkaResult<()> + Send + Sync + 'static,
{
    let client = Arc::new(client);
    let mut dog = Watchdog::new(WEDGED_AFTER);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(CHECK_EVERY) => {}
            _ = shutdown::wait(&mut shutdown) => return None,
        }
        let probe = client.clone();
        let fresh = base.clone();
        let (client_ok, fresh_ok) = tokio::task::spawn_blocking(move || {
            if probe(PROBE_TIMEOUT).is_ok() {
                return (true, true);
            }
            let fresh_ok = fresh
                .create::<BaseConsumer>()
                .and_then(|c| c.fetch_metadata(None, PROBE_TIMEOUT))
                .is_ok();
            (false, fresh_ok)
        })
        .await
        .unwrap_or((true, true));
        match dog.observe(client_ok, fresh_ok, Instant::now()) {
            Verdict::Healthy | Verdict::KafkaAway => {}
            Verdict::Suspect(lasted) => tracing::warn!(
                seconds = lasted.as_secs(),
                limit_seconds = WEDGED_AFTER.as_secs(),
                "the Kafka client does not reach the broker, but a new client does"
            ),
            Verdict::Wedged(lasted) => {
                return Some(Error::KafkaWedged {
                    seconds: lasted.as_secs(),
                })
            }
        }
    }
}

/// A running watchdog: its verdict to come, and its task (stopped on drop).
pub struct Watch {
    verdict: Option<tokio::sync::oneshot::Receiver<Error>>,
    task: tokio::task::JoinHandle<()>,
}

/// Starts watching `client` (see [`watch`]) in a task of its own.
pub fn start<F>(client: F, base: ClientConfig, shutdown: ShutdownSignal) -> Watch
where
    F: Fn(Duration) -> rdkafka::error::KafkaResult<()> + Send + Sync + 'static,
{
    let (sender, verdict) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(
        async move {
            if let Some(e) = watch(client, base, shutdown).await {
                let _ = sender.send(e);
            }
        }
        .in_current_span(),
    );
    Watch {
        verdict: Some(verdict),
        task,
    }
}

impl Watch {
    /// Resolves with the verdict that the client is wedged; never, once the watchdog
    /// ended without one. Safe to await again in a loop (a finished oneshot receiver
    /// must not be polled again).
    pub async fn wedged(&mut self) -> Error {
        if let Some(receiver) = self.verdict.as_mut() {
            match receiver.await {
                Ok(e) => return e,
                Err(_) => self.verdict = None,
            }
        }
        std::future::pending().await
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_watchdog_that_ended_without_a_verdict_is_waited_on_forever_not_polled_again() {
        let (sender, receiver) = tokio::sync::oneshot::channel::<Error>();
        drop(sender);
        let mut ended = Watch {
            verdict: Some(receiver),
            task: tokio::spawn(async {}),
        };
        for _ in 0..3 {
            let waited = tokio::time::timeout(Duration::from_millis(20), ended.wedged()).await;
            assert!(waited.is_err(), "no verdict");
        }
        assert!(ended.verdict.is_none());

        let (sender, receiver) = tokio::sync::oneshot::channel::<Error>();
        let _ = sender.send(Error::KafkaWedged { seconds: 61 });
        let mut wedged = Watch {
            verdict: Some(receiver),
            task: tokio::spawn(async {}),
        };
        assert!(matches!(
            wedged.wedged().await,
            Error::KafkaWedged { seconds: 61 }
        ));
    }

    #[test]
    fn only_a_client_failing_while_fresh_ones_succeed_for_the_limit_is_wedged() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut dog = Watchdog::new(Duration::from_secs(60));
        assert_eq!(dog.observe(true, true, at(0)), Verdict::Healthy);
        // Kafka away for minutes: never the client's fault.
        for s in [10, 100, 500] {
            assert_eq!(dog.observe(false, false, at(s)), Verdict::KafkaAway);
        }
        // Kafka back; the client still fails while fresh ones succeed.
        assert_eq!(
            dog.observe(false, true, at(510)),
            Verdict::Suspect(Duration::ZERO)
        );
        assert_eq!(
            dog.observe(false, true, at(560)),
            Verdict::Suspect(Duration::from_secs(50))
        );
        assert_eq!(
            dog.observe(false, true, at(570)),
            Verdict::Wedged(Duration::from_secs(60))
        );
    }

    #[test]
    fn a_client_that_recovers_or_an_outage_in_between_starts_the_count_again() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut dog = Watchdog::new(Duration::from_secs(60));
        dog.observe(false, true, at(0));
        assert_eq!(dog.observe(true, true, at(50)), Verdict::Healthy);
        assert_eq!(
            dog.observe(false, true, at(100)),
            Verdict::Suspect(Duration::ZERO)
        );
        assert_eq!(dog.observe(false, false, at(150)), Verdict::KafkaAway);
        assert_eq!(
            dog.observe(false, true, at(200)),
            Verdict::Suspect(Duration::ZERO)
        );
    }
}
