//! Handlers of received messages, and the chain that tries them in turn.

use crate::Message;

/// Something that handles received messages (see [`Incoming::dispatch`](crate::Incoming::dispatch)).
///
/// Handlers are synchronous and run on the task that dispatches, one message at a time. A
/// handler that publishes uses [`Client::start_publish`](crate::Client::start_publish), which
/// queues the message without waiting (it cannot deadlock the connection, even when the send
/// quota is full); one that needs to await spawns a task.
pub trait Handler: Send + Sync + 'static {
    /// Handles one message; returns whether it did (a [`Chain`] stops at the first that did).
    fn handle(&self, message: &Message) -> bool;
}

impl<F> Handler for F
where
    F: Fn(&Message) -> bool + Send + Sync + 'static,
{
    fn handle(&self, message: &Message) -> bool {
        self(message)
    }
}

/// Handlers tried in order until one handles the message.
#[derive(Default)]
pub struct Chain {
    handlers: Vec<Box<dyn Handler>>,
}

impl std::fmt::Debug for Chain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chain")
            .field("handlers", &self.handlers.len())
            .finish()
    }
}

impl Chain {
    /// An empty chain.
    pub fn new() -> Self {
        Chain::default()
    }

    /// Adds a handler after the others.
    pub fn then(mut self, handler: impl Handler) -> Self {
        self.handlers.push(Box::new(handler));
        self
    }
}

impl Handler for Chain {
    fn handle(&self, message: &Message) -> bool {
        self.handlers.iter().any(|h| h.handle(message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn chain_stops_at_the_first_that_handles() {
        let seen = Arc::new(AtomicUsize::new(0));
        let s1 = Arc::clone(&seen);
        let s2 = Arc::clone(&seen);
        let chain = Chain::new()
            .then(move |m: &Message| {
                s1.fetch_add(1, Ordering::SeqCst);
                m.topic() == "a"
            })
            .then(move |_: &Message| {
                s2.fetch_add(10, Ordering::SeqCst);
                true
            });
        let m = |t: &str| {
            Message::from_publish(paho_packets::Publish {
                topic: t.into(),
                ..Default::default()
            })
        };
        assert!(chain.handle(&m("a")));
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert!(chain.handle(&m("b")));
        assert_eq!(seen.load(Ordering::SeqCst), 12);
    }
}
