//! Shutdown signalling: one [`ShutdownTrigger`], any number of [`Shutdown`] listeners.

use tokio::sync::watch;

/// Fires shutdown for every [`Shutdown`] made from it.
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

/// Resolves when shutdown has been triggered (or the trigger dropped).
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

impl ShutdownTrigger {
    /// A new trigger.
    pub fn new() -> Self {
        ShutdownTrigger(watch::channel(false).0)
    }

    /// A listener.
    pub fn subscribe(&self) -> Shutdown {
        Shutdown(self.0.subscribe())
    }

    /// Signals every listener.
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Default for ShutdownTrigger {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// Waits for shutdown. Returns immediately if it already happened.
    pub async fn recv(&mut self) {
        // An error means the trigger is gone, which also means shut down.
        let _ = self.0.wait_for(|v| *v).await;
    }
}
