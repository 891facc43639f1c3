//! Request/response over MQTT v5: a request carries a Response Topic and Correlation Data; the
//! responder publishes its answer to that topic with the same Correlation Data.
//!
//! [`Requester`] sends requests and matches responses to them. It must see the messages that
//! arrive on its response topic: put its [`Responses`] handler in the handler chain
//! ([`Requester::responses`]), or pass each message to [`Requester::handle`] yourself. A
//! request that times out, or whose future is dropped, leaves nothing behind.
//!
//! ```no_run
//! # async fn demo(client: paho::Client, incoming: paho::Incoming) -> Result<(), paho::Error> {
//! use std::time::Duration;
//! use paho::extensions::rpc::Requester;
//! use paho::packets::{Publish, QoS};
//!
//! let rpc = Requester::new(client.clone(), "replies/me").await?;
//! tokio::spawn(incoming.dispatch(paho::Chain::new().then(rpc.responses())));
//! let request = Publish { topic: "service/add".into(), qos: QoS::AtLeastOnce,
//!     payload: "1 2".into(), ..Default::default() };
//! let response = rpc.request(request, Duration::from_secs(5)).await?;
//! println!("{:?}", response.payload);
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use paho_packets::topic::validate_topic_name;
use paho_packets::{MqttString, Publish, QoS};
use tokio::sync::oneshot;

use crate::{Client, Error, Handler, Message};

type Pending = Arc<Mutex<HashMap<Bytes, oneshot::Sender<Publish>>>>;

/// Sends requests and matches their responses by Correlation Data. Cheap to clone.
///
/// A requester holds a [`Client`] handle, so one placed in the handler chain of its own
/// connection would keep that connection (and the dispatching task) alive after the
/// application dropped its other handles: the chain lives as long as the connection. Put
/// [`responses`](Requester::responses) in the chain instead; it holds no handle.
#[derive(Clone)]
pub struct Requester {
    client: Client,
    response_topic: MqttString,
    prefix: String,
    next: Arc<AtomicU64>,
    pending: Pending,
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("response_topic", &self.response_topic)
            .field("pending", &self.pending())
            .finish_non_exhaustive()
    }
}

impl Requester {
    /// Subscribes to `response_topic` (QoS 1) and returns a requester whose responses arrive
    /// there.
    ///
    /// # Cancel safety
    ///
    /// As [`Client::subscribe`].
    pub async fn new(client: Client, response_topic: impl Into<MqttString>) -> Result<Self, Error> {
        let response_topic = response_topic.into();
        validate_topic_name(&response_topic)?;
        let ack = client
            .subscribe_to(&response_topic, QoS::AtLeastOnce)
            .await?;
        if let Some(code) = ack.reason_codes.first().filter(|c| c.is_error()) {
            return Err(Error::NotSupported {
                reason_code: code.as_u8(),
                what: "subscription to the response topic refused",
            });
        }
        Ok(Self::without_subscribing(client, response_topic))
    }

    /// A requester for a response topic the caller has already subscribed to.
    pub fn without_subscribing(client: Client, response_topic: impl Into<MqttString>) -> Self {
        let prefix = format!("{}:", client.client_id());
        Requester {
            client,
            response_topic: response_topic.into(),
            prefix,
            next: Arc::new(AtomicU64::new(1)),
            pending: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// The topic responses arrive on.
    pub fn response_topic(&self) -> &str {
        &self.response_topic
    }

    /// Requests awaiting their response.
    pub fn pending(&self) -> usize {
        self.pending.lock().map(|p| p.len()).unwrap_or(0)
    }

    /// Publishes `request` with this requester's Response Topic and fresh Correlation Data,
    /// and waits up to `timeout` for the response (its PUBLISH). [`Error::Timeout`] when none
    /// came.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future forgets the request (a late response is then ignored); a request
    /// already stored is still delivered to the server, as with [`Client::publish`].
    pub async fn request(&self, mut request: Publish, timeout: Duration) -> Result<Publish, Error> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let correlation = Bytes::from(format!("{}{n}", self.prefix));
        request.properties.response_topic = Some(self.response_topic.clone());
        request.properties.correlation_data = Some(correlation.clone());
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .map_err(|_| Error::InvalidArgument("rpc state poisoned by a panic"))?
            .insert(correlation.clone(), tx);
        let _cleanup = Forget {
            pending: &self.pending,
            key: correlation,
        };
        let deadline = tokio::time::Instant::now() + timeout;
        tokio::time::timeout_at(deadline, self.client.publish(request))
            .await
            .map_err(|_| Error::Timeout)??;
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::ConnectionClosed),
            Err(_) => Err(Error::Timeout),
        }
    }

    /// Passes a received message to the request it answers; returns whether it did.
    pub fn handle(&self, message: &Message) -> bool {
        answer(&self.response_topic, &self.pending, message)
    }

    /// The handler that matches responses to this requester's requests, for the handler
    /// chain. Unlike the requester itself it holds no [`Client`], so it does not keep the
    /// connection open once the application dropped its handles.
    pub fn responses(&self) -> Responses {
        Responses {
            response_topic: self.response_topic.clone(),
            pending: Arc::clone(&self.pending),
        }
    }
}

/// The response-matching half of a [`Requester`] ([`Requester::responses`]): a [`Handler`]
/// that holds no [`Client`]. Cheap to clone.
#[derive(Clone)]
pub struct Responses {
    response_topic: MqttString,
    pending: Pending,
}

impl fmt::Debug for Responses {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responses")
            .field("response_topic", &self.response_topic)
            .finish_non_exhaustive()
    }
}

impl Handler for Responses {
    fn handle(&self, message: &Message) -> bool {
        answer(&self.response_topic, &self.pending, message)
    }
}

fn answer(response_topic: &str, pending: &Pending, message: &Message) -> bool {
    if message.topic() != response_topic {
        return false;
    }
    let Some(key) = &message.properties().correlation_data else {
        return false;
    };
    let waiter = pending.lock().ok().and_then(|mut p| p.remove(key));
    match waiter {
        Some(tx) => {
            let _ = tx.send(message.publish().clone());
            true
        }
        None => false,
    }
}

impl Handler for Requester {
    fn handle(&self, message: &Message) -> bool {
        Requester::handle(self, message)
    }
}

/// Removes a request's entry however its wait ends.
struct Forget<'a> {
    pending: &'a Pending,
    key: Bytes,
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.pending.lock() {
            p.remove(&self.key);
        }
    }
}

/// The response to a request: a PUBLISH to the request's Response Topic carrying its
/// Correlation Data, at the request's QoS. `None` when the request named no Response Topic.
pub fn response_to(request: &Message, payload: impl Into<Bytes>) -> Option<Publish> {
    let props = request.properties();
    let topic = props.response_topic.clone()?;
    let mut p = Publish {
        topic,
        qos: request.qos(),
        payload: payload.into(),
        ..Default::default()
    };
    p.properties.correlation_data = props.correlation_data.clone();
    Some(p)
}
