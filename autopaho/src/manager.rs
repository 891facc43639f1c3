//! The manager's task: the one loop that connects, reconnects with backoff and failover,
//! resubscribes, and runs the queue pump and the message dispatch while a connection is up.
//!
//! Its state moves `Connecting -> Connected -> Backoff -> Connecting ...` until a stop is
//! asked for (or a fatal store or queue error), tower's reconnect shape. Every wait selects
//! on the stop signal and uses tokio's clock, so a paused clock drives it in tests.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use paho::packets::{Packet, Publish, SubAck, SubscribeProperties, Subscription};
use paho::session::Store;
use paho::{Client, PublishHandle, SessionHandle};
use paho_queue::{Finish, Queue};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::events::{ConnectionState, Event};
use crate::handle::Shared;
use crate::{Error, ManagerConfig};

/// The subscriptions made through the manager, to make again when the server has forgotten
/// the session: groups as they were subscribed (one SUBSCRIBE each, with its properties).
#[derive(Debug, Default)]
pub(crate) struct Subscriptions {
    groups: Vec<(Vec<Subscription>, SubscribeProperties)>,
}

impl Subscriptions {
    pub(crate) fn remember(&mut self, subs: &[Subscription], props: &SubscribeProperties) {
        let filters: Vec<&str> = subs.iter().map(|s| &*s.filter).collect();
        self.forget_where(|f| filters.contains(&f));
        self.groups.push((subs.to_vec(), props.clone()));
    }

    pub(crate) fn refused(&mut self, subs: &[Subscription], ack: &SubAck) {
        let bad: Vec<String> = subs
            .iter()
            .zip(&ack.reason_codes)
            .filter(|(_, c)| c.as_u8() >= 0x80)
            .map(|(s, _)| s.filter.to_string())
            .collect();
        self.forget_where(|f| bad.iter().any(|b| b == f));
    }

    pub(crate) fn forget(&mut self, filters: &[String]) {
        self.forget_where(|f| filters.iter().any(|b| b == f));
    }

    fn forget_where(&mut self, gone: impl Fn(&str) -> bool) {
        for (subs, _) in &mut self.groups {
            subs.retain(|s| !gone(&s.filter));
        }
        self.groups.retain(|(subs, _)| !subs.is_empty());
    }

    fn groups(&self) -> Vec<(Vec<Subscription>, SubscribeProperties)> {
        self.groups.clone()
    }
}

/// Why a connection's life ended.
enum End {
    /// The application asked to stop.
    Stop,
    /// The connection closed.
    Closed,
    /// The store or the queue failed: the manager stops.
    Fatal(Error),
}

pub(crate) async fn run<S: Store, Q: Queue + 'static>(
    shared: Arc<Shared>,
    config: ManagerConfig,
    session: SessionHandle<S>,
    queue: Arc<Q>,
    mut stop: watch::Receiver<bool>,
) {
    let result = run_inner(&shared, config, session, queue, &mut stop).await;
    shared.client.send_replace(None);
    // Callers of `publish_via_queue` whose messages are still queued hear `Stopped`.
    shared.forget_waiters();
    shared.state.send_replace(ConnectionState::Stopped);
    match &result {
        Ok(()) => tracing::info!("connection manager stopped"),
        Err(e) => tracing::error!(error = %e, "connection manager stopped"),
    }
    shared.done.send_replace(Some(result));
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    // An error means every sender is gone: stop as well.
    let _ = stop.wait_for(|s| *s).await;
}

async fn run_inner<S: Store, Q: Queue + 'static>(
    shared: &Arc<Shared>,
    config: ManagerConfig,
    session: SessionHandle<S>,
    queue: Arc<Q>,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), Error> {
    let mut backoff = config.backoff.clone();
    // With automatic acknowledgement a message is acknowledged only once every handler has
    // returned: acknowledged when taken (before the handlers), a process killed in between
    // would have acked a message its application never processed, which the server then
    // never sends again (QoS 1 and 2). So the connection acks manually, and `dispatch` acks
    // after the handlers unless the application asked to ack itself.
    let auto_ack = !config.connect.manual_acks();
    let mut options = config.connect.with_manual_acks(true);
    let mut first = true;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        // Before every connection, while no connection holds the session: a link that closed
        // while the pump waited for a message to be stored may have stored it anyway (the
        // closing connection finishes its store operations), and the queue still has it.
        settle_handoff(&session, &*queue).await?;
        shared.state.send_replace(ConnectionState::Connecting);
        let mut up = None;
        for server in config.servers.iter() {
            shared.counters.attempts.fetch_add(1, Ordering::Relaxed);
            shared.emit(Event::Connecting {
                server: server.to_string(),
            });
            let opts = if first {
                options.clone()
            } else {
                options.with_clean_start(false)
            };
            let opts = match &config.on_connect {
                Some(hook) => match hook(server, opts) {
                    Some(o) => o,
                    None => {
                        tracing::debug!(%server, "connect hook skipped the server");
                        continue;
                    }
                },
                None => opts,
            };
            let asked_to_resume = !opts.clean_start();
            let attempt = async {
                let transport = config.connector.connect(server).await?;
                Ok::<_, Error>(Client::connect(transport, opts, session.clone()).await?)
            };
            let r = tokio::select! {
                r = attempt => r,
                () = stopped(stop) => return Ok(()),
            };
            match r {
                Ok(c) => {
                    up = Some((server.to_string(), c, asked_to_resume));
                    break;
                }
                Err(error) => {
                    tracing::info!(%server, %error, "connect attempt failed");
                    shared.emit(Event::ConnectFailed {
                        server: server.to_string(),
                        error,
                    });
                }
            }
        }
        let Some((server, (client, incoming), asked_to_resume)) = up else {
            if !pause(shared, &mut backoff, stop).await {
                return Ok(());
            }
            continue;
        };
        first = false;
        // A client id the server assigned is kept, so that the session survives reconnects.
        options = options.with_client_id(client.client_id());
        shared.counters.connects.fetch_add(1, Ordering::Relaxed);
        let up_at = Instant::now();
        shared.emit(Event::Connected {
            server: server.clone(),
            connack: Box::new(client.connack().clone()),
        });
        if asked_to_resume && !client.session_present() {
            shared.emit(Event::SessionLost);
        }
        let abandoned = session.take_abandoned();
        if !abandoned.is_empty() {
            shared.emit(Event::Abandoned {
                messages: abandoned,
            });
        }
        if !client.session_present() && config.resubscribe {
            resubscribe(shared, &client).await;
        }
        shared.client.send_replace(Some(client.clone()));
        shared.state.send_replace(ConnectionState::Connected);
        // The message the pump is handing over, kept outside its future: the `select!` below
        // may drop the pump at any await (see `settle_handover`).
        let mut handing: Option<(u64, PublishHandle)> = None;
        // Kept outside the `select!` too: messages still queued in it when the link closes
        // have been delivered as far as the session knows (a QoS 2 one is not delivered
        // again when the server resends it), so they must reach the handlers; dropping it
        // would acknowledge and discard them (see `dispatch`).
        let mut incoming = incoming;
        let end = tokio::select! {
            _ = client.closed() => End::Closed,
            e = pump(shared, &client, &*queue, &mut handing) => End::Fatal(e),
            // The messages end when the connection does; `closed` says why.
            () = dispatch(shared, &mut incoming, auto_ack) => End::Closed,
            () = stopped(stop) => End::Stop,
        };
        shared.client.send_replace(None);
        let end_result = match end {
            End::Stop => {
                let _ = client.disconnect((config.on_disconnect)()).await;
                dispatch(shared, &mut incoming, auto_ack).await;
                shared.emit(Event::Disconnected { error: None });
                Some(Ok(()))
            }
            End::Fatal(e) => {
                let _ = client.disconnect((config.on_disconnect)()).await;
                dispatch(shared, &mut incoming, auto_ack).await;
                shared.emit(Event::Disconnected {
                    error: Some(e.clone()),
                });
                Some(Err(e))
            }
            End::Closed => {
                // Also waits until the connection's task has let the session go, so that the
                // next connect finds it free at once.
                let error = client.closed().await.err().map(Error::Client);
                dispatch(shared, &mut incoming, auto_ack).await;
                tracing::info!(error = ?error, "connection closed");
                shared.emit(Event::Disconnected {
                    error: error.clone(),
                });
                match &error {
                    // The session store failed: it must be reopened, which only the
                    // application can do. Reconnecting would fail the same way.
                    Some(Error::Client(e)) if is_store_failure(e) => {
                        Some(Err(Error::Client(e.clone())))
                    }
                    _ => None,
                }
            }
        };
        // The connection's task has ended (its store operations finished), so whether the
        // message being handed over reached the session store is known now.
        settle_handover(shared, handing.take());
        if let Some(r) = end_result {
            return r;
        }
        drop(client);
        if up_at.elapsed() >= config.reset_backoff_after {
            backoff.reset();
        }
        // Never a tight loop, even against a server that accepts and then kicks us.
        if !pause(shared, &mut backoff, stop).await {
            return Ok(());
        }
    }
}

/// Waits out the next backoff delay; `false` if a stop came first.
async fn pause(
    shared: &Shared,
    backoff: &mut crate::Backoff,
    stop: &mut watch::Receiver<bool>,
) -> bool {
    let delay = backoff.next_delay();
    shared.state.send_replace(ConnectionState::Backoff);
    shared.emit(Event::Backoff { delay });
    tokio::select! {
        () = tokio::time::sleep(delay) => true,
        () = stopped(stop) => false,
    }
}

async fn resubscribe(shared: &Shared, client: &Client) {
    let groups = match shared.subscriptions.lock() {
        Ok(s) => s.groups(),
        Err(_) => return,
    };
    for (subs, props) in groups {
        let filters: Vec<String> = subs.iter().map(|s| s.filter.to_string()).collect();
        tracing::debug!(?filters, "resubscribing");
        match client.subscribe(subs.clone(), props).await {
            Ok(ack) => {
                if let Ok(mut s) = shared.subscriptions.lock() {
                    s.refused(&subs, &ack);
                }
            }
            Err(e) => shared.emit(Event::ResubscribeFailed {
                filters,
                error: e.into(),
            }),
        }
    }
}

/// Hands the received messages to the handlers until the connection has closed and every
/// message it received was taken. Cancel safe between messages. After the connection's end
/// it is called again to drain what the `select!` left queued. With `auto_ack`, each message
/// is acknowledged after the handlers returned (a no-op once the connection has closed).
async fn dispatch(shared: &Shared, incoming: &mut paho::Incoming, auto_ack: bool) {
    while let Some(m) = incoming.recv().await {
        shared.dispatch(&m);
        if auto_ack {
            let _ = m.ack();
        }
    }
}

/// Before each connection: every queue head that the session already holds (a process killed
/// after handing it to the session, before removing it from the queue; or a link that closed
/// in between) is removed, not sent again; then the session may let go of the records of
/// finished ones.
async fn settle_handoff<S: Store, Q: Queue>(
    session: &SessionHandle<S>,
    queue: &Q,
) -> Result<(), Error> {
    let held = session.held_origins().unwrap_or_default();
    loop {
        let Some(head) = queue.peek()? else {
            let past = held.last().map_or(0, |h| h + 1);
            session.release_origins_before(past);
            return Ok(());
        };
        let seq = head.seq();
        if held.binary_search(&seq).is_ok() {
            tracing::info!(seq, "queue entry already held by the session; removed");
            queue.finish(head, Finish::Remove).await?;
            continue;
        }
        session.release_origins_before(seq);
        return Ok(());
    }
}

/// Moves queued messages to the session while the connection is up, in order: each leaves
/// the queue only once its PUBLISH is durable in the session. Returns only on a fatal error
/// (the queue or the session store failed); when the connection closes it is cancelled by
/// the caller's `select!`, which is safe at every await: an entry not yet removed stays at
/// the head, and one whose publish was stored is held by the session (and found again by
/// `settle_handoff` after a crash).
/// The pump was dropped (the link closed, or a stop) while it handed `handing` over. If the
/// session stored the message, it holds it and will finish it on a later connection (and
/// `settle_handoff` removes the queue entry, if it is still there), so the caller of
/// `publish_via_queue` gets this handle. If not, dropping the handle withdraws it from the
/// session, and the entry, still at the head of the queue, is handed over again later.
fn settle_handover(shared: &Shared, handing: Option<(u64, PublishHandle)>) {
    let Some((seq, mut handle)) = handing else {
        return;
    };
    let mut cx = Context::from_waker(Waker::noop());
    let stored = matches!(
        std::pin::pin!(handle.stored()).as_mut().poll(&mut cx),
        Poll::Ready(Ok(()))
    );
    if stored {
        shared.handed_over(seq, handle);
    } else {
        tracing::debug!(
            seq,
            "queue entry not stored before the link closed; it goes again"
        );
    }
}

async fn pump<Q: Queue>(
    shared: &Shared,
    client: &Client,
    queue: &Q,
    handing: &mut Option<(u64, PublishHandle)>,
) -> Error {
    loop {
        if let Err(e) = queue.wait_non_empty().await {
            return e.into();
        }
        let head = match queue.peek() {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => return e.into(),
        };
        let seq = head.seq();
        let mut publish = match decode(head.payload()) {
            Some(p) => p,
            None => {
                if let Err(e) = queue.finish(head, Finish::Quarantine).await {
                    return e.into();
                }
                shared.emit(Event::QueueRefused {
                    seq,
                    error: Error::Client(paho::Error::InvalidArgument(
                        "a queue entry is not an encoded PUBLISH",
                    )),
                });
                continue;
            }
        };
        if !reduce_expiry(&mut publish, head.enqueued_at()) {
            if let Err(e) = queue.finish(head, Finish::Remove).await {
                return e.into();
            }
            shared.counters.expired.fetch_add(1, Ordering::Relaxed);
            shared.emit(Event::QueueExpired { seq });
            continue;
        }
        let (_, handle) = handing.insert((seq, client.start_publish_with_origin(publish, seq)));
        match handle.stored().await {
            Ok(()) => {}
            Err(e) if e.is_outcome_unknown() || is_store_failure(&e) => return e.into(),
            Err(
                e @ (paho::Error::NotSupported { .. }
                | paho::Error::PacketTooLarge { .. }
                | paho::Error::Codec(_)
                | paho::Error::InvalidArgument(_)),
            ) => {
                // The server will never take it: set it aside, and tell its caller.
                if let Err(qe) = queue.finish(head, Finish::Quarantine).await {
                    return qe.into();
                }
                if let Some((seq, handle)) = handing.take() {
                    shared.handed_over(seq, handle);
                }
                shared.emit(Event::QueueRefused {
                    seq,
                    error: e.into(),
                });
                continue;
            }
            Err(_) => {
                // Not stored (the connection closed before): it stays at the head and goes
                // on the next connection. Wait here for the caller to notice the close.
                std::future::pending::<()>().await;
            }
        }
        if let Err(e) = queue.finish(head, Finish::Remove).await {
            // The session holds it and will send it; the queue may hand it out again after a
            // restart, where `settle_handoff` removes it. Still: the queue failed.
            return e.into();
        }
        client.release_origins_before(seq + 1);
        shared
            .counters
            .sent_from_queue
            .fetch_add(1, Ordering::Relaxed);
        if let Some((seq, handle)) = handing.take() {
            shared.handed_over(seq, handle);
        }
    }
}

fn is_store_failure(e: &paho::Error) -> bool {
    use paho::session::Error as S;
    matches!(
        e,
        paho::Error::Session(
            S::StoreFailed | S::Io { .. } | S::StoreClosed | S::OutcomeUnknown { .. }
        )
    )
}

fn decode(payload: &bytes::Bytes) -> Option<Publish> {
    match Packet::decode_exact(payload.clone()) {
        Ok(Packet::Publish(p)) => Some(p),
        _ => None,
    }
}

/// Shortens the Message Expiry Interval by the time the message waited in the queue;
/// `false` if it has expired. A clock that went backwards counts as no time waited.
fn reduce_expiry(p: &mut Publish, enqueued_at: SystemTime) -> bool {
    let Some(interval) = p.properties.message_expiry_interval else {
        return true;
    };
    let waited = SystemTime::now()
        .duration_since(enqueued_at)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    match u64::from(interval).checked_sub(waited) {
        Some(left) if left > 0 => {
            p.properties.message_expiry_interval = u32::try_from(left).ok();
            true
        }
        _ => false,
    }
}
