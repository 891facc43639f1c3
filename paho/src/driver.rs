//! The connection's task: the only place with a `select!` over the socket, the handles'
//! commands, the store and the keepalive timer. It feeds the session engine and carries out
//! its actions in order.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures_util::stream::FuturesOrdered;
use futures_util::{FutureExt, StreamExt};
use paho_packets::{
    decode, Auth, AuthProperties, AuthReasonCode, Disconnect, DisconnectReasonCode, MqttString,
    Packet, PacketId, QoS, MAX_PACKET_SIZE,
};
use paho_session::{AckToken, Action, Delivery, Key, PublishCompletion, Store, StoreOp};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{mpsc, oneshot, watch, OwnedMutexGuard};
use tokio::time::{Instant, Sleep};

use crate::alias;
use crate::auth::Authenticator;
use crate::client::{Command, PublishReply, Reply, Shared};
use crate::keepalive::{Due, KeepAlive};
use crate::message::{Backlog, Delivered};
use crate::options::ConnectOptions;
use crate::session_handle::SessionState;
use crate::Error;

/// Stop taking new commands while this much is waiting to be written (the socket is slow).
const WRITE_HIGH_WATER: usize = 1 << 20;
/// A read buffer left larger than this by a large packet is replaced once empty.
const READ_BUF_KEEP: usize = 1 << 20;
/// How long the closing DISCONNECT may take to write.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Commands handled per wake-up before the socket gets a turn.
const COMMAND_BATCH: usize = 64;
/// More unacknowledged QoS 1/2 messages than this (one per packet identifier) close the
/// connection with 0x93 even when the Receive Maximum is not strict.
const MAX_UNACKNOWLEDGED: usize = u16::MAX as usize;
/// The most a topic alias can add to an encoded PUBLISH.
const ALIAS_OVERHEAD: u64 = 5;

/// A store operation in progress, with the packet id of the outbound exchange it puts (so a
/// failure can tell that exchange's caller "not stored" rather than "outcome unknown").
type StoreFuture =
    Pin<Box<dyn Future<Output = (Option<PacketId>, Result<(), paho_session::Error>)> + Send>>;

/// The packet id of the outbound exchange `op` puts, if it does.
fn outbound_put(op: &StoreOp) -> Option<PacketId> {
    match op {
        StoreOp::Put {
            key: Key::Outbound(id),
            ..
        } => Some(*id),
        _ => None,
    }
}

fn store_future<S: Store>(op: StoreOp, store: &S) -> StoreFuture {
    let put = outbound_put(&op);
    let fut = op.apply(store);
    Box::pin(async move { (put, fut.await) })
}

/// A send or delivery waiting for the store operations before it.
enum Held {
    Send(Packet, Option<Reply<Option<PublishCompletion>>>),
    Deliver(Delivery),
}

enum Flow {
    Continue,
    /// The client asked to close; the DISCONNECT is in the write buffer.
    Stop,
}

enum Event {
    Stored(Option<(Option<PacketId>, Result<(), paho_session::Error>)>),
    Wrote(std::io::Result<usize>),
    Flushed(std::io::Result<()>),
    Read(std::io::Result<usize>),
    Command(Option<Command>),
    /// A request on the control channel (DISCONNECT); `None` once every handle is gone.
    Control(Option<Command>),
    /// The application took messages, so reading may resume.
    Drained,
    Timer,
}

pub(crate) struct Driver<T, S: Store> {
    state: OwnedMutexGuard<SessionState<S>>,
    rd: ReadHalf<T>,
    wr: WriteHalf<T>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    needs_flush: bool,
    /// Bytes put into `wbuf` and bytes written, since the start.
    queued: u64,
    written: u64,
    /// QoS 0 publishers waiting until their bytes are written.
    qos0_waiters: VecDeque<(u64, Reply<Option<PublishCompletion>>)>,
    cmds: mpsc::UnboundedReceiver<Command>,
    weak_tx: mpsc::WeakUnboundedSender<Command>,
    ctl: mpsc::UnboundedReceiver<Command>,
    ctl_open: bool,
    deliver: Option<mpsc::UnboundedSender<Delivered>>,
    /// What waits for the application, and the QoS 0 count bound.
    backlog: Arc<Backlog>,
    max_queued_qos0: usize,
    dropped_qos0_bytes: u64,
    dropped_qos0: u64,
    /// Tokens to ack because nobody takes deliveries any more.
    orphan_acks: Vec<AckToken>,
    stores: FuturesOrdered<StoreFuture>,
    stores_started: u64,
    stores_done: u64,
    /// The first store failure, and the outbound ids whose Put failed with an error that
    /// means "not done".
    store_failure: Option<paho_session::Error>,
    not_stored: Vec<PacketId>,
    held: VecDeque<(u64, Held)>,
    keepalive: KeepAlive,
    timer: Pin<Box<Sleep>>,
    in_aliases: alias::Inbound,
    out_aliases: alias::Outbound,
    max_in: u32,
    max_out: u32,
    receive_max: u16,
    strict: bool,
    overshoot_warned: bool,
    auth: Option<Arc<Mutex<dyn Authenticator>>>,
    auth_method: Option<MqttString>,
    reauth: Option<Reply<()>>,
    disconnect_replies: Vec<oneshot::Sender<()>>,
    closed_tx: watch::Sender<Option<Result<(), Error>>>,
    stats: Arc<crate::session_handle::LiveStats>,
    /// The time, read once per wake-up of the loop (not per packet or command): every input
    /// of one wake-up happens at the same instant.
    now: Instant,
}

impl<T, S> Driver<T, S>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Store,
{
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        state: OwnedMutexGuard<SessionState<S>>,
        rd: ReadHalf<T>,
        wr: WriteHalf<T>,
        rbuf: BytesMut,
        cmds: mpsc::UnboundedReceiver<Command>,
        weak_tx: mpsc::WeakUnboundedSender<Command>,
        deliver: mpsc::UnboundedSender<Delivered>,
        backlog: Arc<Backlog>,
        ctl: mpsc::UnboundedReceiver<Command>,
        closed_tx: watch::Sender<Option<Result<(), Error>>>,
        o: &ConnectOptions,
        shared: &Shared,
    ) -> Self {
        let now = Instant::now();
        let auth_method = o
            .authenticator
            .as_ref()
            .and_then(|a| a.lock().ok().map(|a| MqttString::from(a.method())));
        Driver {
            state,
            rd,
            wr,
            rbuf,
            wbuf: BytesMut::with_capacity(16 * 1024),
            needs_flush: false,
            queued: 0,
            written: 0,
            qos0_waiters: VecDeque::new(),
            cmds,
            weak_tx,
            ctl,
            ctl_open: true,
            deliver: Some(deliver),
            backlog,
            max_queued_qos0: o.max_queued_qos0,
            dropped_qos0_bytes: 0,
            dropped_qos0: 0,
            orphan_acks: Vec::new(),
            stores: FuturesOrdered::new(),
            stores_started: 0,
            stores_done: 0,
            store_failure: None,
            not_stored: Vec::new(),
            held: VecDeque::new(),
            keepalive: KeepAlive::new(shared.keep_alive, now),
            timer: Box::pin(tokio::time::sleep_until(now)),
            in_aliases: alias::Inbound::new(o.topic_alias_maximum),
            out_aliases: alias::Outbound::new(
                o.outbound_topic_aliases
                    .min(shared.caps.topic_alias_maximum()),
            ),
            max_in: o.maximum_packet_size.unwrap_or(MAX_PACKET_SIZE),
            max_out: shared.caps.maximum_packet_size().unwrap_or(MAX_PACKET_SIZE),
            receive_max: o.receive_maximum,
            strict: o.strict_receive_maximum,
            overshoot_warned: false,
            auth: o.authenticator.clone(),
            auth_method,
            reauth: None,
            disconnect_replies: Vec::new(),
            closed_tx,
            stats: Arc::clone(&shared.stats),
            now,
        }
    }

    pub(crate) async fn run(mut self) {
        let result = self.run_inner().await;
        self.finish(result).await;
    }

    async fn run_inner(&mut self) -> Result<(), Error> {
        // What on_connack queued (resends), then any packets that followed CONNACK.
        self.drain(None)?;
        self.parse()?;
        loop {
            self.settle_orphans()?;
            let deadline = self.keepalive.deadline();
            if let Some(d) = deadline {
                if self.timer.deadline() != d {
                    self.timer.as_mut().reset(d);
                }
            }
            if self.rbuf.is_empty() && self.rbuf.capacity() > READ_BUF_KEEP {
                // A large packet grew it; a read must not take in that much again at once.
                self.rbuf = BytesMut::with_capacity(16 * 1024);
            }
            if self.rbuf.capacity() - self.rbuf.len() < 4096 {
                self.rbuf.reserve(16 * 1024);
            }
            let want_commands = self.wbuf.len() < WRITE_HIGH_WATER;
            // A server that sends faster than it reads (every PUBREL, PUBREC or duplicate
            // QoS 2 PUBLISH wants an answer) is held back by TCP: nothing more is read while
            // the answers wait to be written. A slow application likewise (see
            // `app_backlogged`).
            let write_blocked = self.wbuf.len() >= WRITE_HIGH_WATER;
            let app_blocked = self.app_backlogged();
            let want_read = !write_blocked && !app_blocked;
            let Driver {
                rd,
                wr,
                rbuf,
                wbuf,
                needs_flush,
                cmds,
                ctl,
                ctl_open,
                backlog,
                stores,
                timer,
                ..
            } = self;
            // Unbiased (tokio picks a random first branch each turn), so that a busy socket
            // cannot starve the handles' commands or the keepalive timer.
            let event = tokio::select! {
                r = stores.next(), if !stores.is_empty() => Event::Stored(r),
                // Both cancel safe: a cancelled write wrote nothing; a flush can start over.
                e = async {
                    if wbuf.is_empty() {
                        Event::Flushed(wr.flush().await)
                    } else {
                        Event::Wrote(wr.write(&wbuf[..]).await)
                    }
                }, if !wbuf.is_empty() || *needs_flush => e,
                r = rd.read_buf(rbuf), if want_read => Event::Read(r),
                c = cmds.recv(), if want_commands => Event::Command(c),
                c = ctl.recv(), if *ctl_open => Event::Control(c),
                () = backlog.drained.notified(), if app_blocked => Event::Drained,
                () = timer.as_mut(), if deadline.is_some() => Event::Timer,
            };
            self.now = Instant::now();
            match event {
                Event::Stored(None) => {}
                Event::Stored(Some(r)) => {
                    self.store_done(r)?;
                    self.release()?;
                }
                Event::Wrote(Ok(0)) => {
                    return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into())
                }
                Event::Wrote(Ok(n)) => {
                    let was_blocked = self.wbuf.len() >= WRITE_HIGH_WATER;
                    self.wbuf.advance(n);
                    self.written += n as u64;
                    self.needs_flush = true;
                    while self
                        .qos0_waiters
                        .front()
                        .is_some_and(|(mark, _)| *mark <= self.written)
                    {
                        if let Some((_, w)) = self.qos0_waiters.pop_front() {
                            let _ = w.send(Ok(None));
                        }
                    }
                    if was_blocked && self.wbuf.len() < WRITE_HIGH_WATER {
                        // Packets read before the pause and not yet handled.
                        self.parse()?;
                    }
                }
                Event::Wrote(Err(e)) | Event::Flushed(Err(e)) | Event::Read(Err(e)) => {
                    return Err(e.into())
                }
                Event::Flushed(Ok(())) => self.needs_flush = false,
                Event::Read(Ok(0)) => return Err(Error::ConnectionClosed),
                Event::Read(Ok(_)) => {
                    self.keepalive.received(self.now);
                    self.parse()?;
                }
                Event::Command(None) => {
                    tracing::debug!("every client handle dropped; disconnecting");
                    self.put(&Packet::Disconnect(Disconnect::new(
                        DisconnectReasonCode::NormalDisconnection,
                    )))?;
                    return Ok(());
                }
                Event::Control(None) => self.ctl_open = false,
                Event::Control(Some(c)) => {
                    // Everything the application asked for before this goes out first, even
                    // past the high-water mark: it is bounded by what callers have
                    // outstanding, and the close is what bounds the wait.
                    while let Ok(earlier) = self.cmds.try_recv() {
                        if let Flow::Stop = self.command(earlier)? {
                            c.fail(Error::ConnectionClosed);
                            return Ok(());
                        }
                    }
                    if let Flow::Stop = self.command(c)? {
                        return Ok(());
                    }
                }
                Event::Drained => {}
                Event::Command(Some(c)) => {
                    if let Flow::Stop = self.command(c)? {
                        return Ok(());
                    }
                    for _ in 0..COMMAND_BATCH {
                        let Ok(c) = self.cmds.try_recv() else { break };
                        if let Flow::Stop = self.command(c)? {
                            return Ok(());
                        }
                    }
                }
                Event::Timer => match self.keepalive_poll(app_blocked) {
                    Due::Nothing => {}
                    Due::Ping => {
                        tracing::trace!("PINGREQ");
                        self.put(&Packet::PingReq)?;
                    }
                    Due::Dead => return Err(Error::KeepAliveTimeout),
                },
            }
        }
    }

    /// Whether reading pauses because the application is not taking its messages: more than
    /// `max_queued_bytes` wait for it, and it is not waiting for an answer from the server
    /// (which would sit behind the unread messages: a handler that publishes and awaits the
    /// outcome would deadlock).
    fn app_backlogged(&self) -> bool {
        self.backlog.over() && self.deliver.is_some() && !self.awaiting_server()
    }

    /// Whether the application waits for an answer from the server: an unacknowledged
    /// publish, a subscribe or unsubscribe, a re-authentication.
    fn awaiting_server(&self) -> bool {
        let s = &self.state.session;
        s.in_flight() > 0 || s.packet_ids_in_use() > s.unfinished() || self.reauth.is_some()
    }

    fn keepalive_poll(&mut self, reading_paused: bool) -> Due {
        let now = Instant::now();
        if reading_paused {
            // The server's packets (its PINGRESP among them) wait unread behind the messages
            // the application has not taken: silence is ours, not the server's. Keep pinging
            // so the server keeps us, but do not declare the link dead.
            self.keepalive.received(now);
            self.keepalive.pong();
        }
        self.keepalive.poll(now)
    }

    // ----- commands ---------------------------------------------------------------------

    fn command(&mut self, c: Command) -> Result<Flow, Error> {
        match c {
            Command::ReleaseOrigins(seq) => {
                self.state.session.release_origins_before(seq);
                self.drain(None)?;
            }
            Command::Publish {
                publish,
                origin,
                reply,
            } => {
                tracing::trace!(topic = %publish.topic, qos = ?publish.qos, origin, "publish requested");
                let now = self.now.into_std();
                let session = &mut self.state.session;
                match reply {
                    PublishReply::Written(reply) => {
                        let started = match origin {
                            Some(o) => session.publish_with_origin(publish, o, now),
                            None => session.publish(publish, now),
                        };
                        match started {
                            Err(e) => {
                                let _ = reply.send(Err(e.into()));
                            }
                            // A QoS 0 publish's completion is a ready value (nothing
                            // allocated); the caller hears once its bytes are written.
                            Ok(_sent) => self.drain(Some(reply))?,
                        }
                    }
                    PublishReply::Session(completer) => {
                        // The caller's handle already holds the completion. If the caller is
                        // gone, that withdraws a message still waiting for quota; a stored
                        // one goes on regardless.
                        session.publish_with(publish, origin, completer, now);
                        self.drain(None)?;
                    }
                }
            }
            Command::Subscribe { subscribe, reply } => {
                let r = self
                    .state
                    .session
                    .subscribe(subscribe, self.now.into_std())
                    .map_err(Error::from);
                let _ = reply.send(r);
                self.drain(None)?;
            }
            Command::Unsubscribe { unsubscribe, reply } => {
                let r = self
                    .state
                    .session
                    .unsubscribe(unsubscribe, self.now.into_std())
                    .map_err(Error::from);
                let _ = reply.send(r);
                self.drain(None)?;
            }
            Command::Ack(token) => {
                if self.state.session.ack(token, self.now.into_std()).is_err() {
                    tracing::debug!(id = token.packet_id().get(), "stale ack ignored");
                }
                self.drain(None)?;
            }
            Command::Reauthenticate { reply } => self.start_reauth(reply)?,
            Command::Disconnect { disconnect, reply } => {
                if let Some(secs) = disconnect.properties.session_expiry_interval {
                    self.state.session.set_session_expiry_interval(secs);
                }
                tracing::debug!(reason = disconnect.reason_code.as_u8(), "disconnecting");
                let mut packet = Packet::Disconnect(disconnect);
                let fits = packet
                    .encoded_len()
                    .is_ok_and(|n| n as u64 <= u64::from(self.max_out));
                if let (false, Packet::Disconnect(d)) = (fits, &mut packet) {
                    // MQTT-3.14.2-3/-4: a Reason String or User Properties that would make the
                    // DISCONNECT larger than the server's maximum are left out. Failing to
                    // encode it instead would close the link without a DISCONNECT, and the
                    // server would publish the will of a client that asked for a normal close.
                    d.properties.reason_string = None;
                    d.properties.user_properties.clear();
                }
                self.put(&packet)?;
                self.disconnect_replies.push(reply);
                return Ok(Flow::Stop);
            }
        }
        Ok(Flow::Continue)
    }

    fn start_reauth(&mut self, reply: Reply<()>) -> Result<(), Error> {
        let (Some(auth), Some(method)) = (&self.auth, &self.auth_method) else {
            let _ = reply.send(Err(Error::InvalidArgument(
                "re-authentication needs an authenticator in the connect options",
            )));
            return Ok(());
        };
        if self.reauth.is_some() {
            let _ = reply.send(Err(Error::InvalidArgument(
                "a re-authentication is already in progress",
            )));
            return Ok(());
        }
        let data = auth
            .lock()
            .map_err(|_| Error::Auth("the authenticator panicked earlier".into()))
            .and_then(|mut a| a.initial_data(true));
        let data = match data {
            Ok(d) => d,
            Err(e) => {
                let _ = reply.send(Err(e));
                return Ok(());
            }
        };
        let packet = Packet::Auth(Auth {
            reason_code: AuthReasonCode::ReAuthenticate,
            properties: AuthProperties {
                authentication_method: Some(method.clone()),
                authentication_data: data,
                ..Default::default()
            },
        });
        tracing::debug!("re-authenticating");
        // An AUTH the server cannot take fails this call only, before anything is written,
        // and the connection carries on (closing it over the caller's data would not help).
        let refused = match packet.encoded_len() {
            Ok(n) if n as u64 <= u64::from(self.max_out) => None,
            Ok(n) => Some(Error::PacketTooLarge {
                size: n,
                max: self.max_out,
            }),
            Err(e) => Some(e.into()),
        };
        if let Some(e) = refused {
            let _ = reply.send(Err(e));
            return Ok(());
        }
        self.reauth = Some(reply);
        self.put(&packet)
    }

    // ----- the engine's actions -----------------------------------------------------------

    /// Carries out the engine's actions in order. Store operations are started at once (so
    /// several share one fsync); a send or delivery waits until every store operation before
    /// it has completed. `qos0` is the waiter of the QoS 0 publish this drain follows.
    fn drain(&mut self, mut qos0: Option<Reply<Option<PublishCompletion>>>) -> Result<(), Error> {
        while let Some(action) = self.state.session.poll_action() {
            match action {
                Action::Store(op) => {
                    self.stores_started += 1;
                    if self.stores.is_empty() && self.state.store.is_immediate() {
                        // A store that completes when called (the memory store) is applied in
                        // place: nothing is in progress before it, so it is done before the
                        // actions after it are looked at, and nothing needs holding.
                        let put = outbound_put(&op);
                        let r = op.apply_now(&self.state.store);
                        if let Err(e) = self.store_done((put, r)) {
                            if let Some(w) = qos0.take() {
                                let _ = w.send(Err(e.clone()));
                            }
                            return Err(e);
                        }
                    } else {
                        let fut = store_future(op, &self.state.store);
                        self.stores.push_back(fut);
                    }
                }
                Action::Abandoned(p) => self.abandon(p),
                Action::Send(p) => {
                    let waiter = match &p {
                        Packet::Publish(pb) if pb.qos == QoS::AtMostOnce => qos0.take(),
                        _ => None,
                    };
                    self.hold_or_do(Held::Send(p, waiter))?;
                }
                Action::Deliver(d) => self.hold_or_do(Held::Deliver(d))?,
                _ => {}
            }
        }
        if let Some(w) = qos0 {
            // The engine sent nothing (it cannot happen while connected); do not hang.
            let _ = w.send(Ok(None));
        }
        self.stats.publish(&self.state.session);
        // Memory stores (and an idle file store's fast path) finish at once: no need to wait
        // for the next turn of the loop.
        while !self.stores.is_empty() {
            match self.stores.next().now_or_never() {
                Some(Some(r)) => self.store_done(r)?,
                _ => break,
            }
        }
        self.release()
    }

    fn store_done(
        &mut self,
        (put, r): (Option<PacketId>, Result<(), paho_session::Error>),
    ) -> Result<(), Error> {
        match r {
            Ok(()) => {
                self.stores_done += 1;
                if let Some(id) = put {
                    // The first one resolves the publisher's "stored" stage.
                    self.state.session.on_stored(Key::Outbound(id));
                }
                Ok(())
            }
            Err(e) => {
                tracing::error!(error = %e, "session store failed; closing the connection");
                self.note_store_failure(put, &e);
                // The session hears of it in `finish`, once every store operation still in
                // progress has answered: each one decides its exchange's class of error.
                Err(Error::Session(e))
            }
        }
    }

    fn note_store_failure(&mut self, put: Option<PacketId>, e: &paho_session::Error) {
        if let (Some(id), false) = (put, e.is_outcome_unknown()) {
            self.not_stored.push(id);
        }
        if self.store_failure.is_none() {
            self.store_failure = Some(e.clone());
        }
    }

    /// A message the session gave up on, for the application
    /// ([`SessionHandle::take_abandoned`](crate::SessionHandle::take_abandoned)).
    fn abandon(&mut self, p: paho_packets::Publish) {
        tracing::warn!(topic = %p.topic, qos = ?p.qos, "session lost; message handed back to the application");
        if let Ok(mut a) = self.state.abandoned.lock() {
            a.push(p);
        }
    }

    fn hold_or_do(&mut self, h: Held) -> Result<(), Error> {
        if self.held.is_empty() && self.stores_done == self.stores_started {
            self.carry_out(h)
        } else {
            self.held.push_back((self.stores_started, h));
            Ok(())
        }
    }

    /// Carries out the held sends and deliveries whose store operations have completed.
    fn release(&mut self) -> Result<(), Error> {
        while self
            .held
            .front()
            .is_some_and(|(need, _)| *need <= self.stores_done)
        {
            if let Some((_, h)) = self.held.pop_front() {
                self.carry_out(h)?;
            }
        }
        Ok(())
    }

    fn carry_out(&mut self, h: Held) -> Result<(), Error> {
        match h {
            Held::Send(mut p, waiter) => {
                // Setting an alias adds up to 5 bytes (the property, and one more byte each in
                // the property and remaining lengths). The engine only checked the packet
                // without one, so a PUBLISH that close to the server's maximum goes with its
                // topic alone: aliasing it would make it unsendable (a QoS 1/2 one would close
                // the connection on every reconnect) or record an alias the server never got.
                let alias_room = self.out_aliases.enabled()
                    && matches!(p, Packet::Publish(_))
                    && p.encoded_len()
                        .is_ok_and(|n| n as u64 + ALIAS_OVERHEAD <= u64::from(self.max_out));
                if let Packet::Publish(pb) = &mut p {
                    if alias_room {
                        self.out_aliases.apply(pb);
                    } else {
                        pb.properties.topic_alias = None;
                    }
                    tracing::trace!(
                        id = pb.packet_id.map(|i| i.get()),
                        qos = ?pb.qos,
                        dup = pb.dup,
                        alias = pb.properties.topic_alias,
                        "PUBLISH out"
                    );
                } else {
                    tracing::trace!(packet = p.packet_type().name(), "out");
                }
                match (self.put(&p), waiter) {
                    (Ok(()), Some(w)) => self.qos0_waiters.push_back((self.queued, w)),
                    (Ok(()), None) => {}
                    (Err(e), Some(w)) => {
                        // A QoS 0 message the codec refuses fails its caller only.
                        let _ = w.send(Err(e));
                    }
                    (Err(e), None) => return Err(e),
                }
            }
            Held::Deliver(d) => {
                let (publish, token) = d.into_parts();
                tracing::trace!(topic = %publish.topic, qos = ?publish.qos, "deliver");
                // Over the byte bound reading pauses, unless the application awaits an answer
                // from the server: then a QoS 0 message cannot wait and is dropped.
                if publish.qos == QoS::AtMostOnce
                    && (self.backlog.qos0() >= self.max_queued_qos0
                        || (self.backlog.over() && self.awaiting_server()))
                {
                    // At most once: dropping is allowed, unbounded memory is not.
                    self.dropped_qos0 += 1;
                    self.dropped_qos0_bytes += publish.payload.len() as u64;
                    if self.dropped_qos0.is_power_of_two() {
                        tracing::warn!(
                            dropped = self.dropped_qos0,
                            dropped_payload_bytes = self.dropped_qos0_bytes,
                            limit = self.max_queued_qos0,
                            queued_bytes = self.backlog.bytes(),
                            "the application is not taking QoS 0 messages; dropping new ones"
                        );
                    }
                    return Ok(());
                }
                let undelivered = match &self.deliver {
                    Some(tx) => {
                        // Counted before it can be taken (the receiver subtracts).
                        self.backlog.add(&publish);
                        tx.send(Delivered { publish, token }).err().map(|e| {
                            self.backlog.take(&e.0.publish);
                            e.0.token
                        })
                    }
                    None => Some(token),
                };
                if let Some(Some(t)) = undelivered {
                    // Nobody takes messages any more: acknowledge so the flow does not stall.
                    self.orphan_acks.push(t);
                }
            }
        }
        Ok(())
    }

    fn settle_orphans(&mut self) -> Result<(), Error> {
        if self.orphan_acks.is_empty() {
            return Ok(());
        }
        for t in std::mem::take(&mut self.orphan_acks) {
            let _ = self.state.session.ack(t, self.now.into_std());
        }
        self.drain(None)
    }

    /// Encodes a packet into the write buffer, within the server's Maximum Packet Size.
    fn put(&mut self, p: &Packet) -> Result<(), Error> {
        let n = p.encode_with_max(&mut self.wbuf, self.max_out)?;
        self.queued += n as u64;
        self.keepalive.sent(self.now);
        Ok(())
    }

    // ----- incoming -----------------------------------------------------------------------

    fn parse(&mut self) -> Result<(), Error> {
        loop {
            if self.wbuf.len() >= WRITE_HIGH_WATER {
                // The rest waits until the answers are written (see `run_inner`).
                return Ok(());
            }
            match decode(&mut self.rbuf, self.max_in) {
                Ok(None) => return Ok(()),
                Ok(Some(p)) => self.packet(p)?,
                Err(e) => {
                    let reason = e.disconnect_reason().as_u8();
                    return Err(Error::protocol(
                        reason,
                        format!("bad packet from the server: {e}"),
                    ));
                }
            }
        }
    }

    fn packet(&mut self, p: Packet) -> Result<(), Error> {
        match p {
            Packet::Publish(mut publish) => {
                self.in_aliases.resolve(&mut publish)?;
                let qos = publish.qos;
                tracing::trace!(
                    topic = %publish.topic,
                    id = publish.packet_id.map(|i| i.get()),
                    ?qos,
                    dup = publish.dup,
                    "PUBLISH in"
                );
                self.state
                    .session
                    .handle(Packet::Publish(publish), self.now.into_std())?;
                if qos != QoS::AtMostOnce {
                    self.check_receive_maximum()?;
                }
                self.drain(None)
            }
            p @ (Packet::PubAck(_)
            | Packet::PubRec(_)
            | Packet::PubRel(_)
            | Packet::PubComp(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)) => {
                tracing::trace!(packet = p.packet_type().name(), "in");
                self.state.session.handle(p, self.now.into_std())?;
                self.drain(None)
            }
            Packet::PingResp => {
                self.keepalive.pong();
                Ok(())
            }
            // Reason 0x04 is for a client only (MQTT v5 §3.14.2.1), and a server must not send
            // a Session Expiry Interval [MQTT-3.14.2-2]: both are Protocol Errors, and the
            // interval is never applied to our session.
            Packet::Disconnect(d)
                if d.reason_code == DisconnectReasonCode::DisconnectWithWillMessage =>
            {
                Err(Error::protocol(
                    0x82,
                    "DISCONNECT 0x04 (Disconnect with Will Message) from the server",
                ))
            }
            Packet::Disconnect(d) if d.properties.session_expiry_interval.is_some() => {
                Err(Error::protocol(
                    0x82,
                    "DISCONNECT with a Session Expiry Interval from the server",
                ))
            }
            Packet::Disconnect(d) => Err(Error::ServerDisconnected {
                reason_code: d.reason_code.as_u8(),
                reason_string: d.properties.reason_string.as_ref().map(|s| s.to_string()),
                server_reference: d
                    .properties
                    .server_reference
                    .as_ref()
                    .map(|s| s.to_string()),
            }),
            Packet::Auth(a) => self.auth_packet(a),
            other => Err(Error::protocol(
                0x82,
                format!("unexpected {} from the server", other.packet_type().name()),
            )),
        }
    }

    fn check_receive_maximum(&mut self) -> Result<(), Error> {
        let n = self.state.session.inbound_in_flight();
        if n <= usize::from(self.receive_max) {
            return Ok(());
        }
        // Even lenient, more unacknowledged messages than there are packet identifiers means
        // the server reuses identifiers of messages not yet acknowledged: without this bound
        // it could grow our queues without limit.
        if self.strict || n > MAX_UNACKNOWLEDGED {
            return Err(Error::protocol(
                0x93,
                format!(
                    "{n} unacknowledged QoS 1/2 messages exceed our Receive Maximum {}",
                    self.receive_max
                ),
            ));
        }
        if !self.overshoot_warned {
            self.overshoot_warned = true;
            tracing::warn!(
                unacknowledged = n,
                receive_maximum = self.receive_max,
                "the server exceeds our Receive Maximum; carrying on (strict_receive_maximum disconnects instead)"
            );
        }
        Ok(())
    }

    fn auth_packet(&mut self, a: Auth) -> Result<(), Error> {
        let (Some(auth), Some(method)) = (self.auth.clone(), self.auth_method.clone()) else {
            return Err(Error::protocol(
                0x82,
                "AUTH without enhanced authentication",
            ));
        };
        if self.reauth.is_none() {
            return Err(Error::protocol(
                0x82,
                "AUTH without a re-authentication in progress",
            ));
        }
        if a.properties.authentication_method.as_ref() != Some(&method) {
            return Err(Error::protocol(
                0x82,
                "AUTH with another authentication method",
            ));
        }
        let mut guard = auth
            .lock()
            .map_err(|_| Error::Auth("the authenticator panicked earlier".into()))?;
        let data = a.properties.authentication_data.as_ref();
        match a.reason_code {
            AuthReasonCode::ContinueAuthentication => {
                let answer = guard.challenge(data);
                drop(guard);
                match answer {
                    Ok(d) => self.put(&Packet::Auth(Auth {
                        reason_code: AuthReasonCode::ContinueAuthentication,
                        properties: AuthProperties {
                            authentication_method: Some(method),
                            authentication_data: d,
                            ..Default::default()
                        },
                    })),
                    Err(e) => {
                        if let Some(r) = self.reauth.take() {
                            let _ = r.send(Err(e.clone()));
                        }
                        Err(Error::protocol(
                            0x80,
                            format!("authentication aborted: {e}"),
                        ))
                    }
                }
            }
            AuthReasonCode::Success => {
                let r = guard.success(data);
                drop(guard);
                tracing::debug!(ok = r.is_ok(), "re-authentication finished");
                if let Some(reply) = self.reauth.take() {
                    let _ = reply.send(r.clone());
                }
                r.map_err(|e| {
                    Error::protocol(0x80, format!("the server failed authentication: {e}"))
                })
            }
            _ => Err(Error::protocol(0x82, "AUTH 0x19 from the server")),
        }
    }

    // ----- the end ------------------------------------------------------------------------

    async fn finish(mut self, result: Result<(), Error>) {
        match &result {
            Ok(()) => tracing::info!("disconnected"),
            Err(e) => tracing::warn!(error = %e, "connection closed"),
        }
        // Tell the server why, when we are the ones closing for a reason.
        let reason = match &result {
            Err(Error::Protocol { reason_code, .. }) => Some(*reason_code),
            Err(Error::Session(_)) => Some(0x80),
            _ => None,
        };
        if let Some(code) = reason {
            let code = DisconnectReasonCode::try_from(code)
                .unwrap_or(DisconnectReasonCode::UnspecifiedError);
            let _ = self.put(&Packet::Disconnect(Disconnect::new(code)));
        }
        // A keepalive timeout means the link is presumed dead (half-open), and a server that
        // sent DISCONNECT closes it: writing the backlog there could only stall for the close
        // timeout, while the application waits to hear of the close and the session stays
        // locked against a reconnect. (0x8D is a reason code only a server may send, so there
        // is no DISCONNECT to give on a keepalive timeout either.)
        let transport_ok = !matches!(
            &result,
            Err(Error::Io(_))
                | Err(Error::ConnectionClosed)
                | Err(Error::KeepAliveTimeout)
                | Err(Error::ServerDisconnected { .. })
        );
        if transport_ok {
            let (wr, wbuf) = (&mut self.wr, &self.wbuf);
            let mut wrote_all = false;
            let out = async {
                wr.write_all(wbuf).await?;
                wrote_all = true;
                wr.shutdown().await
            };
            if let Ok(Err(e)) = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, out).await {
                tracing::debug!(error = %e, "could not write the closing packets");
            }
            if wrote_all {
                // QoS 0 messages written by this last write are sent: say so (an error would
                // invite the caller to publish them again).
                self.written = self.queued;
            }
        }
        let error = result.clone().err().unwrap_or(Error::ConnectionClosed);
        // Every store operation in progress answers first: after a failure, each tells
        // whether its exchange was stored.
        while let Some((put, r)) = self.stores.next().await {
            match (put, r) {
                (put, Err(e)) => self.note_store_failure(put, &e),
                (Some(id), Ok(())) => self.state.session.on_stored(Key::Outbound(id)),
                (None, Ok(())) => {}
            }
        }
        if let Some(e) = self.store_failure.take() {
            let not_stored = std::mem::take(&mut self.not_stored);
            self.state.session.on_store_failed(e, not_stored);
        }
        self.state
            .session
            .on_connection_lost(Instant::now().into_std());
        // Finish the store operations (a session with expiry 0 is given up now), dropping the
        // sends and deliveries: what was stored is resent on the next connection, and the
        // server redelivers what was not acknowledged.
        while let Some(action) = self.state.session.poll_action() {
            match action {
                Action::Store(op) => self.stores.push_back(store_future(op, &self.state.store)),
                Action::Abandoned(p) => self.abandon(p),
                _ => {}
            }
        }
        while let Some((put, r)) = self.stores.next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "session store failed while closing");
                self.state.session.on_store_failed(e, put);
            }
        }
        for (_, h) in self.held.drain(..) {
            if let Held::Send(_, Some(w)) = h {
                let _ = w.send(Err(error.clone()));
            }
        }
        for (mark, w) in self.qos0_waiters.drain(..) {
            let _ = w.send(if mark <= self.written {
                Ok(None)
            } else {
                Err(error.clone())
            });
        }
        if let Some(r) = self.reauth.take() {
            let _ = r.send(Err(error.clone()));
        }
        self.cmds.close();
        while let Ok(c) = self.cmds.try_recv() {
            c.fail(Error::ConnectionClosed);
        }
        let Driver {
            state,
            deliver,
            closed_tx,
            disconnect_replies,
            weak_tx,
            ..
        } = self;
        drop(weak_tx);
        drop(deliver);
        // Give the session back before anyone hears the connection closed, so that a
        // reconnect waiting on `closed()` finds it free.
        drop(state);
        closed_tx.send_replace(Some(result));
        for r in disconnect_replies {
            let _ = r.send(());
        }
    }
}
