//! The API's door: counts the requests in flight, and once the agent is
//! stopping lets no new one in, so that the agent can wait for those it
//! started before it takes its listeners and DNS files down.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Gate {
    stopping: CancellationToken,
    in_flight: AtomicUsize,
    /// Woken when the last request in flight ends.
    idle: Notify,
}

/// One request in flight; it ends when this is dropped.
#[derive(Debug)]
pub struct Pass(Arc<Gate>);

impl Drop for Pass {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl Gate {
    /// Lets a request in, unless the agent is stopping.
    pub fn enter(self: &Arc<Self>) -> Option<Pass> {
        // Counted first, then checked: a `stop` that does not see this
        // request in the count is seen by it.
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        let pass = Pass(self.clone());
        (!self.stopping.is_cancelled()).then_some(pass)
    }

    /// Lets no new request in from now on.
    pub fn stop(&self) {
        self.stopping.cancel();
    }

    /// Returns once [`Gate::stop`] has been called.
    pub async fn stopped(&self) {
        self.stopping.cancelled().await;
    }

    /// Returns once no request is in flight.
    pub async fn idle(&self) {
        loop {
            let woken = self.idle.notified();
            if self.in_flight.load(Ordering::SeqCst) == 0 {
                return;
            }
            woken.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_stopped_gate_lets_none_in_and_waits_for_those_inside() {
        let gate = Arc::new(Gate::default());
        let inside = gate.enter().expect("open before stop");
        gate.stop();
        gate.stopped().await;
        assert!(gate.enter().is_none());
        // Still one inside: idle waits for it.
        let waited = tokio::time::timeout(Duration::from_millis(50), gate.idle()).await;
        assert!(waited.is_err());
        let g = gate.clone();
        let idle = tokio::spawn(async move { g.idle().await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(inside);
        tokio::time::timeout(Duration::from_secs(5), idle)
            .await
            .expect("idle once the last request ended")
            .expect("the waiting task ran");
    }
}
