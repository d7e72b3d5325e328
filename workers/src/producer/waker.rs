//! Waking the relay once a message sent one at a time is committed.
//!
//! An idle relay looks at the outbox every `RELAY_LINGER_MS`; a message sent alone
//! wakes it at once. This producer's own relay is woken in process, the leader (which
//! may run in another producer) by `NOTIFY outbox_relay`, sent on a pooled connection
//! after the request's transaction committed. Notifying inside that transaction made
//! PostgreSQL serialize every such commit on its one notify lock: with 24 clients
//! inserting single rows, 4,600 commits a second with NOTIFY against 15,900 without.
//! Here, requests committed while a NOTIFY is on its way share the next one.

use std::sync::Arc;

use deadpool_postgres::Pool;
use tokio::sync::Notify;
use tracing::Instrument;

use crate::producer::outbox::NOTIFY_CHANNEL;
use crate::shutdown::{self, ShutdownSignal};

/// Wakes the relays: this producer's at once, the others' through NOTIFY.
#[derive(Clone)]
pub struct RelayWaker {
    local: Arc<Notify>,
    remote: Arc<Notify>,
}

impl RelayWaker {
    /// Starts the task that sends the NOTIFYs, until `shutdown`.
    pub fn start(local: Arc<Notify>, pool: Pool, shutdown: ShutdownSignal) -> RelayWaker {
        let remote = Arc::new(Notify::new());
        tokio::spawn(notify_when_asked(pool, remote.clone(), shutdown).in_current_span());
        RelayWaker { local, remote }
    }

    /// After a message sent alone was committed.
    pub fn wake(&self) {
        self.local.notify_one();
        self.remote.notify_one();
    }
}

/// Sends one NOTIFY for every wake asked for while none was on its way. A failure is
/// said once, not per message: the relay still finds the messages on its next look.
async fn notify_when_asked(pool: Pool, asked: Arc<Notify>, mut shutdown: ShutdownSignal) {
    let statement = format!("NOTIFY {NOTIFY_CHANNEL}");
    let mut failing = false;
    loop {
        tokio::select! {
            _ = asked.notified() => {}
            _ = shutdown::wait(&mut shutdown) => return,
        }
        let sent = match pool.get().await {
            Ok(client) => client
                .batch_execute(&statement)
                .await
                .map_err(|e| crate::error_chain(&e)),
            Err(e) => Err(crate::error_chain(&e)),
        };
        match sent {
            Ok(()) if failing => {
                tracing::info!("waking the relay with NOTIFY works again");
                failing = false;
            }
            Ok(()) => {}
            Err(error) if !failing => {
                tracing::warn!(%error, "could not wake the relay with NOTIFY; it finds the messages on its next look at the outbox");
                failing = true;
            }
            Err(_) => {}
        }
    }
}
