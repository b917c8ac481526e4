//! Graceful shutdown: the first Ctrl-C or SIGTERM asks every task to stop through a
//! watch channel; a second one exits at once.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Fires once on the first SIGINT/SIGTERM; exits the process on the second.
pub fn on_signal() -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
            tracing::error!("cannot install signal handlers");
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        tracing::info!("shutting down (send the signal again to exit at once)");
        let _ = tx.send(true);
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("second signal: exiting now");
        std::process::exit(130);
    });
    rx
}

/// Resolves when `rx` reports shutdown.
pub async fn wait(mut rx: watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}
