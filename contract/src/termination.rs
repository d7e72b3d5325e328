//! How both binaries learn that they should stop: SIGTERM (what the kubelet sends when
//! a pod goes, before SIGKILL at the end of the grace period) or Ctrl-C.

/// Resolves on SIGTERM or Ctrl-C. Without a SIGTERM handler (it could not be
/// installed) only Ctrl-C ends it, and that is logged.
pub async fn requested() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops this process gracefully");
                std::future::pending::<()>().await
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
