//! Reads in flight and how they land: each read's deliveries awaited by a task of its
//! own, the bounds on what is in flight, and which finished reads the watermark may
//! move past (those before the first that did not land).

use std::collections::VecDeque;

use rdkafka::producer::DeliveryFuture;
use tokio::task::JoinHandle;

use super::{refused_for_good, RelaySettings, Watermark};

/// A read handed to Kafka whose deliveries are awaited by a task of its own.
pub(super) struct InFlight {
    pub(super) last: Watermark,
    pub(super) count: u64,
    /// Bytes of its rows (payload, key and headers): librdkafka's queue bound counts
    /// payloads only, so the relay bounds what it hands over itself.
    pub(super) bytes: usize,
    pub(super) deliveries: JoinHandle<Result<(), DeliveryFailure>>,
}

/// A message Kafka did not confirm.
#[derive(Debug)]
pub(super) struct DeliveryFailure {
    pub(super) at: Watermark,
    pub(super) error: String,
    /// Kafka refused the message itself (too large, invalid): retrying as it is
    /// cannot help.
    pub(super) for_good: bool,
}

/// Whether more is in flight than the settings allow: more reads than
/// `max_reads_in_flight`, or more bytes (headers included) than the producer's
/// queue is given.
pub(super) fn over_in_flight_bounds(
    in_flight: &VecDeque<InFlight>,
    settings: &RelaySettings,
) -> bool {
    in_flight.len() > settings.max_reads_in_flight
        || in_flight.iter().map(|b| b.bytes).sum::<usize>()
            > settings.queue_kbytes.saturating_mul(1024)
}

/// A read's deliveries as its task ends.
pub(super) type Delivered =
    std::result::Result<Result<(), DeliveryFailure>, tokio::task::JoinError>;

/// Reads landed together: the watermark after the last, their messages and number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Landed {
    pub(super) last: Watermark,
    pub(super) count: u64,
    pub(super) reads: u64,
}

/// Of reads finished in order, those that landed before the first that did not, and
/// the outcome of that one: the watermark may move past the first group only.
pub(super) fn land_in_order(
    finished: Vec<(Watermark, u64, Delivered)>,
) -> (Option<Landed>, Option<Delivered>) {
    let mut landed: Option<Landed> = None;
    for (last, count, outcome) in finished {
        if !matches!(outcome, Ok(Ok(()))) {
            return (landed, Some(outcome));
        }
        let before = landed.map_or((0, 0), |l| (l.count, l.reads));
        landed = Some(Landed {
            last,
            count: before.0 + count,
            reads: before.1 + 1,
        });
    }
    (landed, None)
}

/// Awaits a read's deliveries in order: the first that Kafka did not confirm, if any.
pub(super) async fn await_deliveries(
    deliveries: Vec<(Watermark, DeliveryFuture)>,
) -> Result<(), DeliveryFailure> {
    for (at, delivery) in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => {
                return Err(DeliveryFailure {
                    at,
                    for_good: e.rdkafka_error_code().is_some_and(refused_for_good),
                    error: e.to_string(),
                })
            }
            Err(_) => {
                return Err(DeliveryFailure {
                    at,
                    error: "the producer dropped a delivery report".into(),
                    for_good: false,
                })
            }
        }
    }
    Ok(())
}
