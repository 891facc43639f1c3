//! [`Client`]: the cheap, cloneable handle to one connection, and [`Client::connect`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::BytesMut;
use paho_packets::{
    decode, Auth, AuthProperties, AuthReasonCode, ConnAck, Connect, ConnectProperties, Disconnect,
    DisconnectReasonCode, MqttString, Packet, PacketId, Publish, QoS, SubAck, Subscribe,
    SubscribeProperties, Subscription, SubscriptionOptions, UnsubAck, Unsubscribe,
    UnsubscribeProperties, MAX_PACKET_SIZE,
};
use paho_session::{
    AckToken, Action, PublishCompleter, PublishCompletion, PublishOutcome, Store,
    SubscribeCompletion, UnsubscribeCompletion,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch, OwnedMutexGuard};
use tracing::Instrument;

use crate::capabilities::ServerCapabilities;
use crate::driver::Driver;
use crate::message::{Backlog, Incoming};
use crate::options::ConnectOptions;
use crate::session_handle::{LiveStats, SessionHandle, SessionState, SessionStats};
use crate::Error;

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request from a [`Client`] handle to the connection's task.
// Publish is the large variant and the hot one: boxing it would cost an allocation per
// message, to save bytes in commands that are rare.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Command {
    Publish {
        publish: Publish,
        /// The outgoing queue entry it comes from (`Session::publish_with_origin`).
        origin: Option<u64>,
        reply: PublishReply,
    },
    /// `Session::release_origins_before`.
    ReleaseOrigins(u64),
    Subscribe {
        subscribe: Subscribe,
        reply: Reply<SubscribeCompletion>,
    },
    Unsubscribe {
        unsubscribe: Unsubscribe,
        reply: Reply<UnsubscribeCompletion>,
    },
    Ack(AckToken),
    Disconnect {
        disconnect: Disconnect,
        reply: oneshot::Sender<()>,
    },
    Reauthenticate {
        reply: Reply<()>,
    },
}

/// Where a publish's outcome goes.
pub(crate) enum PublishReply {
    /// QoS 0: answered (`None`) once the message is written, since nothing else will answer.
    Written(Reply<Option<PublishCompletion>>),
    /// QoS 1/2: the session completes the handle's completion directly (made in
    /// `start_publish`, so one allocation per publish carries every event). Dropped before
    /// the session took it, the handle hears `NotHandedOver`, which is `ConnectionClosed`.
    Session(PublishCompleter),
}

impl Command {
    /// Answers the command's caller with `error` (the connection ended before it was done).
    pub(crate) fn fail(self, error: Error) {
        match self {
            Command::Publish {
                reply: PublishReply::Written(reply),
                ..
            } => {
                let _ = reply.send(Err(error));
            }
            // Dropping it answers "never reached the session".
            Command::Publish {
                reply: PublishReply::Session(_),
                ..
            } => {}
            Command::Subscribe { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Unsubscribe { reply, .. } => {
                let _ = reply.send(Err(error));
            }
            Command::Reauthenticate { reply } => {
                let _ = reply.send(Err(error));
            }
            Command::Disconnect { reply, .. } => {
                let _ = reply.send(());
            }
            Command::Ack(_) | Command::ReleaseOrigins(_) => {}
        }
    }
}

/// What every handle of one connection shares.
pub(crate) struct Shared {
    pub(crate) connack: ConnAck,
    pub(crate) caps: ServerCapabilities,
    pub(crate) client_id: MqttString,
    pub(crate) keep_alive: u16,
    pub(crate) session_expiry: u32,
    pub(crate) closed: watch::Receiver<Option<Result<(), Error>>>,
    /// DISCONNECT requests: a channel of their own that the connection's task always reads,
    /// even while it takes no other command because its socket is slow, so that
    /// [`Client::disconnect`] cannot wait behind a stuck socket.
    pub(crate) ctl: mpsc::UnboundedSender<Command>,
    /// The session's counters, published by the connection's task.
    pub(crate) stats: Arc<LiveStats>,
}

/// A handle to one MQTT v5 connection.
///
/// Made by [`Client::connect`], which starts the connection's task: the only owner of the
/// transport and the session while the connection lives. The handle is cheap to clone, `Send`
/// and `Sync`; its methods send requests to the task and never require the caller to poll an
/// event loop. Dropping the last handle closes the connection (DISCONNECT 0x00).
#[derive(Clone)]
pub struct Client {
    tx: mpsc::UnboundedSender<Command>,
    shared: Arc<Shared>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("client_id", &self.shared.client_id)
            .field("closed", &self.is_closed())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects over `transport` (a TCP stream, a TLS stream, an in-memory pipe: anything
    /// `AsyncRead + AsyncWrite`), driving `session`. Returns the handle and the stream of
    /// received messages once the server's CONNACK accepted the connection.
    ///
    /// Sends the full CONNECT from `options` (with the session's Session Expiry Interval, and
    /// Clean Start from the options unless the session expired while offline), runs the
    /// enhanced-authentication exchange if an [`Authenticator`](crate::Authenticator) is set,
    /// and reads CONNACK: a refusal is [`Error::ConnectionRefused`] with its reason code.
    /// Then the connection's task is spawned on the current tokio runtime; it resends what
    /// the session has unfinished (Session Present = 1) or fails what the server forgot
    /// (Session Present = 0).
    ///
    /// Only one connection drives a session at a time: this waits until the previous
    /// connection of `session` has ended (see [`Client::closed`]).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping the future drops the transport and gives the session back
    /// unchanged apart from its link state (nothing is lost; the next connect starts over).
    pub async fn connect<T, S>(
        transport: T,
        options: ConnectOptions,
        session: SessionHandle<S>,
    ) -> Result<(Client, Incoming), Error>
    where
        T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
        S: Store,
    {
        let span = tracing::info_span!("mqtt", client_id = %options.client_id);
        let mut state = Arc::clone(&session.inner)
            .lock_owned()
            .instrument(span.clone())
            .await;
        let (rd, wr) = tokio::io::split(transport);
        let hs = handshake(rd, wr, &options, &mut state);
        let res = match options.connect_timeout {
            Some(t) => match tokio::time::timeout(t, hs).instrument(span.clone()).await {
                Ok(r) => r,
                Err(_) => Err(Error::Timeout),
            },
            None => hs.instrument(span.clone()).await,
        };
        let hs = match res {
            Ok(h) => h,
            Err(e) => {
                state
                    .session
                    .on_connection_lost(tokio::time::Instant::now().into_std());
                span.in_scope(|| tracing::warn!(error = %e, "connect failed"));
                return Err(e);
            }
        };
        let client_id = match &hs.connack.properties.assigned_client_identifier {
            Some(id) if options.client_id.is_empty() => id.clone(),
            _ => options.client_id.clone(),
        };
        let caps = ServerCapabilities::from_connack(&hs.connack);
        let keep_alive = caps.server_keep_alive().unwrap_or(options.keep_alive);
        span.record("client_id", tracing::field::display(&client_id));
        span.in_scope(|| {
            tracing::info!(
                session_present = hs.connack.session_present,
                keep_alive,
                receive_maximum = caps.receive_maximum(),
                "connected"
            )
        });
        let (closed_tx, closed_rx) = watch::channel(None);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ctl, ctl_rx) = mpsc::unbounded_channel();
        let (deliver_tx, deliver_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            connack: hs.connack,
            caps,
            client_id,
            keep_alive,
            session_expiry: hs.session_expiry,
            closed: closed_rx,
            ctl,
            stats: Arc::new(LiveStats::default()),
        });
        let backlog = Arc::new(Backlog::new(options.max_queued_bytes));
        let incoming = Incoming::new(
            deliver_rx,
            tx.downgrade(),
            options.manual_acks,
            Arc::clone(&backlog),
        );
        let driver = Driver::new(
            state,
            hs.rd,
            hs.wr,
            hs.rbuf,
            rx,
            tx.downgrade(),
            deliver_tx,
            backlog,
            ctl_rx,
            closed_tx,
            &options,
            &shared,
        );
        tokio::spawn(driver.run().instrument(span));
        Ok((Client { tx, shared }, incoming))
    }

    /// The CONNACK the server accepted the connection with.
    pub fn connack(&self) -> &ConnAck {
        &self.shared.connack
    }

    /// The server's capabilities and limits (from CONNACK).
    pub fn server(&self) -> &ServerCapabilities {
        &self.shared.caps
    }

    /// Whether the server resumed a session it kept (CONNACK Session Present).
    pub fn session_present(&self) -> bool {
        self.shared.connack.session_present
    }

    /// The client identifier in use: the one sent, or the one the server assigned when an
    /// empty one was sent. A reconnecting caller should connect again with it.
    pub fn client_id(&self) -> &str {
        &self.shared.client_id
    }

    /// The keepalive in force, in seconds (the server's, if it imposed one).
    pub fn keep_alive(&self) -> u16 {
        self.shared.keep_alive
    }

    /// The session's counters while this connection drives it (unfinished QoS 1/2
    /// exchanges, publishes waiting for quota, inbound QoS 2 awaiting PUBREL, packet ids in
    /// use), as the connection's task last published them; [`SessionHandle::stats`] reads
    /// them between connections.
    pub fn session_stats(&self) -> SessionStats {
        self.shared.stats.read()
    }

    /// Whether the connection has closed.
    pub fn is_closed(&self) -> bool {
        self.shared.closed.borrow().is_some() || self.tx.is_closed()
    }

    /// Publishes a message and waits for its outcome: [`PublishOutcome::Sent`] once a QoS 0
    /// message is written; the PUBACK (QoS 1) or PUBCOMP (QoS 2, or a failed PUBREC) with its
    /// reason code otherwise.
    ///
    /// The server's capabilities are checked first (Maximum QoS, Retain Available, Maximum
    /// Packet Size, Topic Alias Maximum), with typed errors. A QoS 1/2 message waits for send
    /// quota (the server's Receive Maximum) in first-in, first-out order, is stored in the
    /// session, then sent. Topic aliases are applied by the client
    /// ([`ConnectOptionsBuilder::outbound_topic_aliases`](crate::ConnectOptionsBuilder::outbound_topic_aliases));
    /// an alias set here is only checked against the server's maximum, then replaced.
    ///
    /// The outcome of a stored QoS 1/2 message survives the connection: if the link drops,
    /// this future stays pending until a later connection with the same session finishes the
    /// exchange. If the server has forgotten the session (Session Present = 0) the session's
    /// [`SessionLostPolicy`](paho_session::SessionLostPolicy) decides: by default the message
    /// is republished and this resolves with the new exchange's acknowledgement; under `Fail`
    /// it fails with [`SessionLost`](paho_session::Error::SessionLost), carrying the message.
    /// A caller that will not reconnect can race it with [`Client::closed`].
    ///
    /// # Errors: "not done" or "outcome unknown"
    ///
    /// An error means the message was **not stored** and publishing it again is safe
    /// (invalid arguments, a capability the server lacks, a store write that failed and was
    /// undone, a connection that closed before the message was handed over) — except one
    /// for which [`Error::is_outcome_unknown`] is true: the message is (or may be) in the
    /// session store, and the session cannot finish it here (the store failed after it was
    /// stored, or the session was dropped with it unfinished). It is resent when the session
    /// is reopened from the store; publishing it again would deliver it twice, which breaks
    /// QoS 2.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not withdraw a message that was already stored: it is still
    /// sent, resent and acknowledged, and its packet id freed only then. A QoS 1/2 message
    /// still waiting for send quota when the future is dropped is withdrawn; a QoS 0 message
    /// that reached the connection's task is sent regardless. Use
    /// [`start_publish`](Client::start_publish) to hand the message over without awaiting.
    pub async fn publish(&self, publish: Publish) -> Result<PublishOutcome, Error> {
        self.start_publish(publish).await
    }

    /// Hands a message to the connection at once, without waiting, and returns a
    /// [`PublishHandle`] that resolves like [`publish`](Client::publish). Because it never
    /// waits, a message handler may call it without risk of deadlock, even when the send quota
    /// is full.
    pub fn start_publish(&self, publish: Publish) -> PublishHandle {
        self.start_publish_inner(publish, None)
    }

    /// [`start_publish`](Client::start_publish) for a message taken from a durable outgoing
    /// queue, whose entry is numbered `origin` (increasing in queue order). The number is
    /// stored in the session with the message (see
    /// [`Session::publish_with_origin`](paho_session::Session::publish_with_origin)): remove
    /// the entry from the queue once [`PublishHandle::stored`] returned `Ok`, then call
    /// [`release_origins_before`](Client::release_origins_before). After a crash between the
    /// two, [`SessionHandle::held_origins`] says which queue entries the session already holds,
    /// so that they are removed from the queue instead of sent twice. This is the handoff that
    /// autopaho's `publish_via_queue` is built on.
    pub fn start_publish_with_origin(&self, publish: Publish, origin: u64) -> PublishHandle {
        self.start_publish_inner(publish, Some(origin))
    }

    /// Tells the session that every queue entry numbered below `seq` is durably gone from its
    /// queue, so finished exchanges that came from them may leave the store. Sent to the
    /// connection without waiting; if the connection is gone, nothing happens (call
    /// [`SessionHandle::release_origins_before`] then, or again on the next connection: it is
    /// idempotent).
    pub fn release_origins_before(&self, seq: u64) {
        let _ = self.tx.send(Command::ReleaseOrigins(seq));
    }

    fn start_publish_inner(&self, publish: Publish, origin: Option<u64>) -> PublishHandle {
        if let Err(e) = self.shared.caps.check_publish(&publish) {
            return PublishHandle::failed(e);
        }
        let (reply, state) = if publish.qos == QoS::AtMostOnce {
            let (reply, rx) = oneshot::channel();
            (PublishReply::Written(reply), PubState::Reply(rx))
        } else {
            let (completer, completion) = PublishCompletion::pair_for_handover();
            (
                PublishReply::Session(completer),
                PubState::Completion(completion),
            )
        };
        if self
            .tx
            .send(Command::Publish {
                publish,
                origin,
                reply,
            })
            .is_err()
        {
            return PublishHandle::failed(Error::ConnectionClosed);
        }
        PublishHandle { state }
    }

    /// Subscribes to one or more topic filters and returns the SUBACK with one reason code per
    /// filter. The server's wildcard, subscription identifier and shared subscription
    /// capabilities and its Maximum Packet Size are checked first. A Subscription Identifier
    /// in `properties` is reported on every matching delivery
    /// ([`Message::subscription_identifiers`](crate::Message::subscription_identifiers)).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future after the request reached the connection does not withdraw the
    /// SUBSCRIBE; only its SUBACK is lost to the caller. A SUBSCRIBE is not resent on a later
    /// connection: if the link drops first the result is
    /// [`ConnectionLost`](paho_session::Error::ConnectionLost).
    pub async fn subscribe(
        &self,
        subscriptions: Vec<Subscription>,
        properties: SubscribeProperties,
    ) -> Result<SubAck, Error> {
        let subscribe = Subscribe {
            packet_id: PacketId::MIN,
            properties,
            subscriptions,
        };
        self.shared.caps.check_subscribe(&subscribe)?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Subscribe { subscribe, reply })?;
        let completion = rx.await.map_err(|_| Error::ConnectionClosed)??;
        Ok(completion.await?)
    }

    /// Subscribes to one filter at `qos` with default options (a shortcut for
    /// [`subscribe`](Client::subscribe)).
    ///
    /// # Cancel safety
    ///
    /// As [`subscribe`](Client::subscribe).
    pub async fn subscribe_to(&self, filter: &str, qos: QoS) -> Result<SubAck, Error> {
        self.subscribe(
            vec![Subscription::new(filter, SubscriptionOptions::qos(qos))],
            SubscribeProperties::default(),
        )
        .await
    }

    /// Unsubscribes from one or more topic filters and returns the UNSUBACK with one reason
    /// code per filter.
    ///
    /// # Cancel safety
    ///
    /// As [`subscribe`](Client::subscribe).
    pub async fn unsubscribe(
        &self,
        filters: Vec<MqttString>,
        properties: UnsubscribeProperties,
    ) -> Result<UnsubAck, Error> {
        let unsubscribe = Unsubscribe {
            packet_id: PacketId::MIN,
            properties,
            filters,
        };
        if unsubscribe.filters.is_empty() {
            return Err(Error::InvalidArgument(
                "UNSUBSCRIBE needs at least one filter",
            ));
        }
        self.shared
            .caps
            .check_size(&Packet::Unsubscribe(unsubscribe.clone()))?;
        let (reply, rx) = oneshot::channel();
        self.send(Command::Unsubscribe { unsubscribe, reply })?;
        let completion = rx.await.map_err(|_| Error::ConnectionClosed)??;
        Ok(completion.await?)
    }

    /// Re-authenticates with the [`Authenticator`](crate::Authenticator) given at connect:
    /// sends AUTH 0x19 and runs the exchange to the server's AUTH 0x00. A server that refuses
    /// disconnects ([`Error::ServerDisconnected`]).
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop an exchange that has started; its outcome is lost.
    pub async fn reauthenticate(&self) -> Result<(), Error> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Reauthenticate { reply })?;
        rx.await.map_err(|_| Error::ConnectionClosed)?
    }

    /// Closes the connection with a DISCONNECT (its reason code and properties) and waits
    /// until the connection's task has ended. A Session Expiry Interval in the DISCONNECT
    /// updates the session's; it may not be set to non-zero if CONNECT sent zero (MQTT-3.14.2-2).
    /// On a connection that has already closed this does nothing and returns `Ok`.
    ///
    /// Unfinished QoS 1/2 publishes stay in the session for the next connection. Requests
    /// made before this call (a QoS 0 publish, say) go out before the DISCONNECT.
    ///
    /// It returns promptly even when the socket is stuck (a server that stopped reading): the
    /// request does not queue behind other commands, and writing what is buffered plus the
    /// DISCONNECT is bounded by a 5 s timeout, after which the transport is closed anyway.
    ///
    /// # Cancel safety
    ///
    /// Dropping the future does not stop the disconnect once requested.
    pub async fn disconnect(&self, disconnect: Disconnect) -> Result<(), Error> {
        if let Some(secs) = disconnect.properties.session_expiry_interval {
            if secs != 0 && self.shared.session_expiry == 0 {
                return Err(Error::InvalidArgument(
                    "a DISCONNECT may not set a non-zero Session Expiry Interval when CONNECT sent 0",
                ));
            }
        }
        let (reply, rx) = oneshot::channel();
        if self
            .shared
            .ctl
            .send(Command::Disconnect { disconnect, reply })
            .is_ok()
        {
            let _ = rx.await;
        }
        let _ = self.closed().await;
        Ok(())
    }

    /// Closes the connection normally (DISCONNECT 0x00, the server discards the will).
    ///
    /// # Cancel safety
    ///
    /// As [`disconnect`](Client::disconnect).
    pub async fn disconnect_normally(&self) -> Result<(), Error> {
        self.disconnect(Disconnect::new(DisconnectReasonCode::NormalDisconnection))
            .await
    }

    /// Waits until the connection has closed and its task has ended (the session is then free
    /// for the next connection). `Ok` when this client closed it with
    /// [`disconnect`](Client::disconnect) (or by dropping every handle); otherwise why it
    /// closed: [`Error::ServerDisconnected`] with the server's reason,
    /// [`Error::Protocol`] with the reason the client disconnected with,
    /// [`Error::KeepAliveTimeout`], [`Error::Io`], [`Error::ConnectionClosed`] (EOF)...
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only watches.
    pub async fn closed(&self) -> Result<(), Error> {
        let mut rx = self.shared.closed.clone();
        let r = match rx.wait_for(|v| v.is_some()).await {
            Ok(v) => v.clone(),
            Err(_) => None,
        };
        r.unwrap_or(Err(Error::ConnectionClosed))
    }

    fn send(&self, c: Command) -> Result<(), Error> {
        self.tx.send(c).map_err(|_| Error::ConnectionClosed)
    }
}

/// The outcome of [`Client::start_publish`]: a future resolving like
/// [`Client::publish`].
///
/// # Cancel safety
///
/// Dropping it does not withdraw a message already stored (see [`Client::publish`]).
#[must_use = "dropping a PublishHandle does not withdraw a stored message, but loses its outcome"]
pub struct PublishHandle {
    state: PubState,
}

enum PubState {
    Done(Option<Error>),
    /// A QoS 0 message was written (seen by [`PublishHandle::stored`]).
    Sent,
    Reply(oneshot::Receiver<Result<Option<PublishCompletion>, Error>>),
    Completion(PublishCompletion),
}

impl fmt::Debug for PublishHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match &self.state {
            PubState::Done(_) => "failed",
            PubState::Sent => "sent",
            PubState::Reply(_) => "handing over",
            PubState::Completion(_) => "awaiting acknowledgement",
        };
        f.debug_struct("PublishHandle").field("state", &s).finish()
    }
}

impl PublishHandle {
    fn failed(e: Error) -> Self {
        PublishHandle {
            state: PubState::Done(Some(e)),
        }
    }

    /// Waits until the message is **durable in the session store**, the first stage of a QoS
    /// 1/2 publish (its PUBLISH is stored before it goes on the wire), without waiting for the
    /// acknowledgement; awaiting the handle afterwards still gives the final outcome. A QoS 0
    /// message (never stored) returns `Ok(())` once the connection took it.
    ///
    /// A message waiting for send quota (the server's Receive Maximum) is stored only when it
    /// can be sent, so this waits for quota too. If the publish fails first, this returns the
    /// error, which awaiting the handle returns again. A queue that hands messages to the
    /// session removes an entry only after this returned `Ok`.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping this future loses nothing (call it again or await the handle).
    /// Dropping the *handle* while the message still waits for quota withdraws it, as with
    /// [`Client::publish`].
    pub async fn stored(&mut self) -> Result<(), Error> {
        loop {
            match &mut self.state {
                PubState::Sent => return Ok(()),
                PubState::Done(e) => {
                    return Err(e.clone().unwrap_or(Error::ConnectionClosed));
                }
                PubState::Reply(rx) => {
                    self.state = match rx.await {
                        Err(_) => PubState::Done(Some(Error::ConnectionClosed)),
                        Ok(Err(e)) => PubState::Done(Some(e)),
                        // QoS 0: written; nothing to store.
                        Ok(Ok(None)) => PubState::Sent,
                        Ok(Ok(Some(c))) => PubState::Completion(c),
                    };
                }
                PubState::Completion(c) => return c.stored().await.map_err(Error::from),
            }
        }
    }
}

impl Future for PublishHandle {
    type Output = Result<PublishOutcome, Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            match &mut self.state {
                PubState::Done(e) => {
                    return Poll::Ready(Err(e.take().unwrap_or(Error::ConnectionClosed)))
                }
                PubState::Sent => return Poll::Ready(Ok(PublishOutcome::Sent)),
                PubState::Reply(rx) => match Pin::new(rx).poll(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Ok(Ok(Some(c)))) => self.state = PubState::Completion(c),
                    Poll::Ready(Ok(Ok(None))) => return Poll::Ready(Ok(PublishOutcome::Sent)),
                    Poll::Ready(Ok(Err(e))) => return Poll::Ready(Err(e)),
                    Poll::Ready(Err(_)) => return Poll::Ready(Err(Error::ConnectionClosed)),
                },
                PubState::Completion(c) => {
                    return Pin::new(c).poll(cx).map(|r| r.map_err(Error::from))
                }
            }
        }
    }
}

// ----- the handshake ----------------------------------------------------------------------

pub(crate) struct Handshake<T> {
    pub(crate) rd: ReadHalf<T>,
    pub(crate) wr: WriteHalf<T>,
    pub(crate) rbuf: BytesMut,
    pub(crate) connack: ConnAck,
    pub(crate) session_expiry: u32,
}

async fn write_packet<W: AsyncWrite + Unpin>(wr: &mut W, p: &Packet) -> Result<(), Error> {
    let mut buf = BytesMut::new();
    p.encode(&mut buf)?;
    wr.write_all(&buf).await?;
    wr.flush().await?;
    Ok(())
}

/// Applies the session's pending store operations and waits for them (before CONNECT).
async fn settle<S: Store>(state: &mut SessionState<S>) -> Result<(), Error> {
    let mut pending = Vec::new();
    while let Some(a) = state.session.poll_action() {
        match a {
            Action::Store(op) => pending.push(op.apply(&state.store)),
            other => {
                tracing::debug!(action = ?std::mem::discriminant(&other), "stale action dropped before connecting")
            }
        }
    }
    for f in pending {
        f.await?;
    }
    Ok(())
}

async fn handshake<T, S>(
    mut rd: ReadHalf<T>,
    mut wr: WriteHalf<T>,
    o: &ConnectOptions,
    state: &mut OwnedMutexGuard<SessionState<S>>,
) -> Result<Handshake<T>, Error>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Store,
{
    settle(state).await?;
    let clean_start = state
        .session
        .begin_connect(o.clean_start, tokio::time::Instant::now().into_std());
    settle(state).await?;
    let session_expiry = state.session.session_expiry_interval();
    let (auth_method, auth_data) = match &o.authenticator {
        Some(a) => {
            let mut a = a
                .lock()
                .map_err(|_| Error::Auth("the authenticator panicked earlier".into()))?;
            (Some(MqttString::from(a.method())), a.initial_data(false)?)
        }
        None => (None, None),
    };
    let connect = Connect {
        clean_start,
        keep_alive: o.keep_alive,
        properties: ConnectProperties {
            session_expiry_interval: (session_expiry != 0).then_some(session_expiry),
            receive_maximum: (o.receive_maximum != u16::MAX).then_some(o.receive_maximum),
            maximum_packet_size: o.maximum_packet_size,
            topic_alias_maximum: (o.topic_alias_maximum != 0).then_some(o.topic_alias_maximum),
            request_response_information: o.request_response_information,
            request_problem_information: o.request_problem_information,
            authentication_method: auth_method.clone(),
            authentication_data: auth_data,
            user_properties: o.user_properties.clone(),
        },
        client_id: o.client_id.clone(),
        will: o.will.clone(),
        username: o.username.clone(),
        password: o.password.clone(),
    };
    // Never log the CONNECT itself: it holds the password and authentication data.
    tracing::debug!(
        clean_start,
        keep_alive = o.keep_alive,
        session_expiry,
        has_will = o.will.is_some(),
        has_password = o.password.is_some(),
        auth_method = auth_method.as_deref(),
        "sending CONNECT"
    );
    write_packet(&mut wr, &Packet::from(connect)).await?;
    let max_in = o.maximum_packet_size.unwrap_or(MAX_PACKET_SIZE);
    let mut rbuf = BytesMut::with_capacity(8 * 1024);
    loop {
        let packet = match decode(&mut rbuf, max_in) {
            Ok(Some(p)) => p,
            Ok(None) => {
                if rd.read_buf(&mut rbuf).await? == 0 {
                    return Err(Error::ConnectionClosed);
                }
                continue;
            }
            Err(e) => {
                let reason = e.disconnect_reason();
                let _ = write_packet(&mut wr, &Packet::Disconnect(Disconnect::new(reason))).await;
                return Err(Error::protocol(reason.as_u8(), e.to_string()));
            }
        };
        match packet {
            Packet::ConnAck(connack) => {
                let connack = *connack;
                if connack.reason_code.is_error() {
                    let _ = state
                        .session
                        .on_connack(&connack, tokio::time::Instant::now().into_std());
                    return Err(Error::ConnectionRefused {
                        reason_code: connack.reason_code.as_u8(),
                        reason_string: connack
                            .properties
                            .reason_string
                            .as_ref()
                            .map(|s| s.to_string()),
                    });
                }
                let accepted = state
                    .session
                    .on_connack(&connack, tokio::time::Instant::now().into_std())
                    .map_err(Error::from);
                let accepted = accepted.and_then(|()| match &o.authenticator {
                    Some(a) => a
                        .lock()
                        .map_err(|_| Error::Auth("the authenticator panicked earlier".into()))?
                        .success(connack.properties.authentication_data.as_ref()),
                    None => Ok(()),
                });
                if let Err(e) = accepted {
                    let reason = e.reason_code().unwrap_or(0x80);
                    let reason = DisconnectReasonCode::try_from(reason)
                        .unwrap_or(DisconnectReasonCode::UnspecifiedError);
                    let _ =
                        write_packet(&mut wr, &Packet::Disconnect(Disconnect::new(reason))).await;
                    return Err(e);
                }
                return Ok(Handshake {
                    rd,
                    wr,
                    rbuf,
                    connack,
                    session_expiry,
                });
            }
            Packet::Auth(auth) if auth.reason_code == AuthReasonCode::ContinueAuthentication => {
                let (Some(a), Some(method)) = (&o.authenticator, &auth_method) else {
                    let _ = write_packet(
                        &mut wr,
                        &Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ProtocolError)),
                    )
                    .await;
                    return Err(Error::protocol(
                        0x82,
                        "AUTH without enhanced authentication",
                    ));
                };
                if auth.properties.authentication_method.as_ref() != Some(method) {
                    let _ = write_packet(
                        &mut wr,
                        &Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ProtocolError)),
                    )
                    .await;
                    return Err(Error::protocol(
                        0x82,
                        "AUTH with another authentication method",
                    ));
                }
                let answer = a
                    .lock()
                    .map_err(|_| Error::Auth("the authenticator panicked earlier".into()))?
                    .challenge(auth.properties.authentication_data.as_ref());
                let data = match answer {
                    Ok(d) => d,
                    Err(e) => {
                        let _ = write_packet(
                            &mut wr,
                            &Packet::Disconnect(Disconnect::new(
                                DisconnectReasonCode::UnspecifiedError,
                            )),
                        )
                        .await;
                        return Err(e);
                    }
                };
                tracing::debug!("answering an authentication challenge");
                let reply = Auth {
                    reason_code: AuthReasonCode::ContinueAuthentication,
                    properties: AuthProperties {
                        authentication_method: Some(method.clone()),
                        authentication_data: data,
                        ..Default::default()
                    },
                };
                write_packet(&mut wr, &Packet::Auth(reply)).await?;
            }
            Packet::Disconnect(d) => {
                return Err(Error::ServerDisconnected {
                    reason_code: d.reason_code.as_u8(),
                    reason_string: d.properties.reason_string.as_ref().map(|s| s.to_string()),
                    server_reference: d
                        .properties
                        .server_reference
                        .as_ref()
                        .map(|s| s.to_string()),
                });
            }
            other => {
                let _ = write_packet(
                    &mut wr,
                    &Packet::Disconnect(Disconnect::new(DisconnectReasonCode::ProtocolError)),
                )
                .await;
                return Err(Error::protocol(
                    0x82,
                    format!("{} before CONNACK", other.packet_type().name()),
                ));
            }
        }
    }
}
