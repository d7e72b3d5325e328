//! Graceful shutdown: SIGTERM or Ctrl-C flips a watch channel every task selects on.

use tokio::sync::watch;

/// The receiving side: `changed()` resolves once shutdown starts.
pub type ShutdownSignal = watch::Receiver<bool>;

/// A sender and a receiver; `trigger` starts shutdown.
pub fn channel() -> (watch::Sender<bool>, ShutdownSignal) {
    watch::channel(false)
}

/// Resolves when shutdown has started (at once if it already has).
pub async fn wait(signal: &mut ShutdownSignal) {
    while !*signal.borrow_and_update() {
        if signal.changed().await.is_err() {
            return;
        }
    }
}

/// Sends `true` on `sender` on SIGTERM or Ctrl-C.
pub fn on_signals(sender: watch::Sender<bool>) {
    tokio::spawn(async move {
        outbox_contract::termination::requested().await;
        tracing::info!("shutdown requested: finishing in-flight work");
        let _ = sender.send(true);
    });
}
