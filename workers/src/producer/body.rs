//! Request bodies in memory: a byte-weighted bound across requests, taken before a
//! body is read, and the read itself with a size limit and a deadline.
//!
//! A request first reserves its declared `Content-Length` from the [`BodyBudget`]
//! (in KiB); a body without one (chunked) reserves as it arrives. Only then is the
//! body read, within [`BodyLimits::read_timeout`] and [`BodyLimits::max_bytes`]. The
//! reservation is held until the request is answered, so the bytes of the bodies held
//! at once never exceed the budget, however many requests arrive together.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, BodyDataStream, Bytes};
use axum::http::{header, HeaderMap};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

const KIB: u64 = 1024;

/// How long the rest of a refused request's body is read and dropped.
pub const DISCARD_FOR: Duration = Duration::from_secs(10);

/// Reads what is left of a refused request's body and drops it, in the background and
/// for at most [`DISCARD_FOR`], keeping none of it: a client still sending its body
/// then reads the answer, instead of losing it to the reset that closing a connection
/// with unread input causes.
pub fn discard(mut rest: BodyDataStream) {
    tokio::spawn(async move {
        let _ = tokio::time::timeout(DISCARD_FOR, async {
            while let Some(Ok(_)) = rest.next().await {}
        })
        .await;
    });
}

/// The bytes of request bodies this process holds at once, shared by all requests.
#[derive(Debug)]
pub struct BodyBudget {
    /// One permit per KiB.
    permits: Arc<Semaphore>,
    total_kib: u32,
    /// How long a request may wait for its bytes before it is refused.
    wait: Duration,
    /// The most KiB held at once since the start.
    most_held_kib: AtomicU64,
}

/// Bytes of the budget held by one request, given back when it is dropped.
#[derive(Debug)]
pub struct BodyReservation {
    budget: Arc<BodyBudget>,
    permit: Option<OwnedSemaphorePermit>,
}

/// Why the budget refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BudgetRefusal {
    /// The body is larger than the whole budget: it can never be held.
    #[error("the request body of {bytes} bytes is larger than the {limit_bytes} bytes all request bodies may hold in memory at once (BODY_MEMORY_KBYTES)")]
    LargerThanBudget { bytes: u64, limit_bytes: u64 },
    /// Other requests hold the budget: retry later.
    #[error("request bodies held in memory are at their bound of {limit_bytes} bytes (BODY_MEMORY_KBYTES) and {bytes} more bytes did not free up within {wait:?}")]
    Exhausted {
        bytes: u64,
        limit_bytes: u64,
        wait: Duration,
    },
}

fn kib_of(bytes: u64) -> u64 {
    bytes.div_ceil(KIB)
}

impl BodyBudget {
    /// A budget of `bytes` (rounded down to KiB, at least 1 KiB), waiting at most `wait`
    /// for bytes held by other requests.
    pub fn new(bytes: u64, wait: Duration) -> Arc<BodyBudget> {
        let total_kib = u32::try_from(bytes / KIB).unwrap_or(u32::MAX).max(1);
        Arc::new(BodyBudget {
            permits: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
            wait,
            most_held_kib: AtomicU64::new(0),
        })
    }

    /// The whole budget, in bytes.
    pub fn limit_bytes(&self) -> u64 {
        u64::from(self.total_kib) * KIB
    }

    /// Bytes reserved now.
    pub fn held_bytes(&self) -> u64 {
        self.held_kib() * KIB
    }

    /// The most bytes reserved at once since the start.
    pub fn most_held_bytes(&self) -> u64 {
        self.most_held_kib.load(Ordering::Relaxed) * KIB
    }

    fn held_kib(&self) -> u64 {
        u64::from(self.total_kib).saturating_sub(self.permits.available_permits() as u64)
    }

    /// An empty reservation, to be grown as a body arrives.
    pub fn empty(self: &Arc<Self>) -> BodyReservation {
        BodyReservation {
            budget: self.clone(),
            permit: None,
        }
    }

    /// Reserves `bytes`, waiting at most the budget's wait for other requests to give
    /// bytes back.
    pub async fn reserve(self: &Arc<Self>, bytes: u64) -> Result<BodyReservation, BudgetRefusal> {
        let mut reservation = self.empty();
        reservation.grow_to(bytes).await?;
        Ok(reservation)
    }

    async fn take(&self, kib: u64, bytes: u64) -> Result<OwnedSemaphorePermit, BudgetRefusal> {
        let refused_larger = || BudgetRefusal::LargerThanBudget {
            bytes,
            limit_bytes: self.limit_bytes(),
        };
        if kib > u64::from(self.total_kib) {
            return Err(refused_larger());
        }
        let n = u32::try_from(kib).map_err(|_| refused_larger())?;
        let exhausted = || BudgetRefusal::Exhausted {
            bytes,
            limit_bytes: self.limit_bytes(),
            wait: self.wait,
        };
        let permit =
            match tokio::time::timeout(self.wait, self.permits.clone().acquire_many_owned(n)).await
            {
                Ok(Ok(permit)) => permit,
                // The semaphore is never closed; treat it as busy all the same.
                Ok(Err(_)) | Err(_) => return Err(exhausted()),
            };
        self.most_held_kib
            .fetch_max(self.held_kib(), Ordering::Relaxed);
        Ok(permit)
    }
}

impl BodyReservation {
    /// Bytes reserved.
    pub fn bytes(&self) -> u64 {
        self.permit
            .as_ref()
            .map_or(0, |p| p.num_permits() as u64 * KIB)
    }

    /// Grows the reservation to at least `bytes`; on refusal it keeps what it had.
    pub async fn grow_to(&mut self, bytes: u64) -> Result<(), BudgetRefusal> {
        let have = self.bytes() / KIB;
        let want = kib_of(bytes);
        if want <= have {
            return Ok(());
        }
        if want > u64::from(self.budget.total_kib) {
            return Err(BudgetRefusal::LargerThanBudget {
                bytes,
                limit_bytes: self.budget.limit_bytes(),
            });
        }
        let more = self.budget.take(want - have, bytes).await?;
        match &mut self.permit {
            Some(permit) => permit.merge(more),
            None => self.permit = Some(more),
        }
        Ok(())
    }
}

/// The limits of one body read.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// The largest body taken (`MAX_BODY_BYTES`).
    pub max_bytes: usize,
    /// How long the whole body may take to arrive (`BODY_READ_TIMEOUT_MS`).
    pub read_timeout: Duration,
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    /// Larger than `MAX_BODY_BYTES`, by its `Content-Length` or as it arrived.
    #[error("request body is larger than the limit of {limit} bytes (MAX_BODY_BYTES)")]
    TooLarge { limit: usize },
    /// The budget of bodies in memory refused it.
    #[error(transparent)]
    Budget(#[from] BudgetRefusal),
    /// It did not arrive in time.
    #[error("the request body did not arrive within {timeout:?} (BODY_READ_TIMEOUT_MS)")]
    Timeout { timeout: Duration },
    /// The connection failed or the framing was wrong.
    #[error("unreadable request body: {0}")]
    Unreadable(#[source] axum::Error),
    /// A `Content-Length` that is not a number.
    #[error("invalid Content-Length")]
    BadLength,
}

/// The request's declared body length, if it has one.
fn declared_length(headers: &HeaderMap) -> Result<Option<u64>, BodyError> {
    headers
        .get(header::CONTENT_LENGTH)
        .map(|v| {
            v.to_str()
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or(BodyError::BadLength)
        })
        .transpose()
}

/// Reads `body` whole: refuses a declared length over the limit before reading a
/// byte, reserves the body's bytes from `budget` before they are read (all of a
/// declared length at once, a chunked body as it grows), and gives up at the
/// deadline. The reservation comes back with the bytes and must be kept as long as
/// anything made from them is.
pub async fn read(
    headers: &HeaderMap,
    body: Body,
    limits: BodyLimits,
    budget: &Arc<BodyBudget>,
) -> Result<(Bytes, BodyReservation), BodyError> {
    let max = limits.max_bytes as u64;
    let mut stream = body.into_data_stream();
    let declared = match declared_length(headers) {
        Ok(declared) => declared,
        Err(e) => {
            discard(stream);
            return Err(e);
        }
    };
    if declared.is_some_and(|n| n > max) {
        discard(stream);
        return Err(BodyError::TooLarge {
            limit: limits.max_bytes,
        });
    }
    let deadline = tokio::time::Instant::now() + limits.read_timeout;
    let reserving = match declared {
        Some(n) => budget.reserve(n).await,
        None => Ok(budget.empty()),
    };
    let mut reservation = match reserving {
        Ok(reservation) => reservation,
        Err(refusal) => {
            discard(stream);
            return Err(refusal.into());
        }
    };
    let reading = async {
        let mut buffer: Vec<u8> = Vec::with_capacity(declared.unwrap_or(0) as usize);
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(BodyError::Unreadable)?;
            let len = (buffer.len() + chunk.len()) as u64;
            if len > max {
                return Err(BodyError::TooLarge {
                    limit: limits.max_bytes,
                });
            }
            if len > buffer.capacity() as u64 {
                // Reserve the capacity the buffer will have, not just its length.
                let capacity = len.max(buffer.capacity() as u64 * 2).min(max);
                reservation.grow_to(capacity).await?;
                buffer.reserve_exact(capacity as usize - buffer.len());
            }
            buffer.extend_from_slice(&chunk);
        }
        Ok(buffer)
    };
    let read = tokio::time::timeout_at(deadline, reading).await;
    match read {
        Ok(Ok(buffer)) => Ok((Bytes::from(buffer), reservation)),
        Ok(Err(e)) => {
            if matches!(e, BodyError::TooLarge { .. } | BodyError::Budget(_)) {
                discard(stream);
            }
            Err(e)
        }
        Err(_) => Err(BodyError::Timeout {
            timeout: limits.read_timeout,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reservations_beyond_the_budget_wait_and_then_are_refused() {
        let budget = BodyBudget::new(100 * KIB, Duration::from_millis(50));
        let first = budget.reserve(60 * KIB).await.expect("first fits");
        assert_eq!(budget.held_bytes(), 60 * KIB);
        let refused = budget.reserve(50 * KIB).await.expect_err("over the budget");
        assert!(
            matches!(refused, BudgetRefusal::Exhausted { .. }),
            "{refused:?}"
        );
        drop(first);
        assert_eq!(budget.held_bytes(), 0);
        let second = budget.reserve(50 * KIB).await.expect("fits once freed");
        assert_eq!(second.bytes(), 50 * KIB);
        assert_eq!(budget.most_held_bytes(), 60 * KIB);
    }

    #[tokio::test]
    async fn a_body_larger_than_the_whole_budget_is_refused_at_once() {
        let budget = BodyBudget::new(100 * KIB, Duration::from_secs(60));
        let refused = tokio::time::timeout(Duration::from_secs(1), budget.reserve(101 * KIB))
            .await
            .expect("refused without waiting")
            .expect_err("larger than the budget");
        assert_eq!(
            refused,
            BudgetRefusal::LargerThanBudget {
                bytes: 101 * KIB,
                limit_bytes: 100 * KIB
            }
        );
    }

    #[tokio::test]
    async fn a_reservation_grows_in_kib_and_gives_everything_back_when_dropped() {
        let budget = BodyBudget::new(100 * KIB, Duration::from_millis(50));
        let mut reservation = budget.empty();
        reservation.grow_to(1).await.expect("1 byte");
        assert_eq!(reservation.bytes(), KIB);
        reservation.grow_to(10 * KIB + 1).await.expect("grown");
        assert_eq!(reservation.bytes(), 11 * KIB);
        assert_eq!(budget.held_bytes(), 11 * KIB);
        drop(reservation);
        assert_eq!(budget.held_bytes(), 0);
    }

    #[tokio::test]
    async fn a_chunked_body_reserves_as_it_arrives_and_stops_at_the_limit() {
        let budget = BodyBudget::new(1024 * KIB, Duration::from_millis(50));
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..10)
            .map(|_| Ok(Bytes::from(vec![b'x'; 10_000])))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let limits = BodyLimits {
            max_bytes: 50_000,
            read_timeout: Duration::from_secs(5),
        };
        let refused = read(&HeaderMap::new(), body, limits, &budget)
            .await
            .expect_err("over MAX_BODY_BYTES");
        assert!(
            matches!(refused, BodyError::TooLarge { limit: 50_000 }),
            "{refused:?}"
        );
        assert!(budget.most_held_bytes() <= 50_000 + KIB);
        assert_eq!(budget.held_bytes(), 0);
    }
}
