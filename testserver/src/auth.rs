//! Enhanced authentication (MQTT v5 section 4.12): the [`Authenticator`] hook and a scripted
//! challenge/response implementation of it.

use bytes::Bytes;

/// One step of an enhanced authentication exchange, as the server sees it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct AuthRequest<'a> {
    /// The client's identifier (as sent; empty if the server is going to assign one).
    pub client_id: &'a str,
    /// The Authentication Method the client named.
    pub method: &'a str,
    /// The Authentication Data the client sent in this step, if any.
    pub data: Option<&'a Bytes>,
    /// 0 for the CONNECT (or the AUTH 0x19 that starts a re-authentication), then 1, 2, ...
    /// for each AUTH 0x18 (Continue Authentication) from the client.
    pub step: u32,
    /// True for a re-authentication on an established connection.
    pub reauthenticate: bool,
}

/// What the server answers to one step.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum AuthOutcome {
    /// Send AUTH 0x18 (Continue Authentication) with this data and wait for the client.
    Continue(Bytes),
    /// Authentication succeeded: CONNACK 0x00 (or AUTH 0x00 after re-authentication), with
    /// this Authentication Data if any.
    Success(Option<Bytes>),
    /// Authentication failed: CONNACK 0x87 during connect, DISCONNECT 0x87 afterwards.
    Fail,
    /// The method is not supported: CONNACK 0x8C during connect, DISCONNECT 0x8C afterwards.
    BadMethod,
}

/// Decides each step of an enhanced authentication exchange.
///
/// Called on the connection's task, with no lock held; it must not block. The step number
/// makes stateless scripts possible (see [`ChallengeResponse`]). A closure
/// `Fn(&AuthRequest) -> AuthOutcome` is an authenticator too.
pub trait Authenticator: Send + Sync + 'static {
    /// Answers one step of the exchange.
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthOutcome;
}

impl<F> Authenticator for F
where
    F: Fn(&AuthRequest<'_>) -> AuthOutcome + Send + Sync + 'static,
{
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthOutcome {
        self(request)
    }
}

/// A scripted challenge/response exchange: for each round the server sends a challenge and
/// expects an exact response.
///
/// Step 0 (the CONNECT or AUTH 0x19) gets the first challenge whatever data it carries; step
/// `k` must carry the `k`-th expected response, and then gets the next challenge, or success
/// after the last round. Any other method is [`AuthOutcome::BadMethod`]; a wrong response is
/// [`AuthOutcome::Fail`]. With no rounds, step 0 succeeds at once.
///
/// ```
/// use paho_testserver::auth::ChallengeResponse;
/// use paho_testserver::TestServer;
///
/// // CONNECT (method "DEMO") -> AUTH 0x18 "nonce-1"; client AUTH 0x18 "proof-1" ->
/// // AUTH 0x18 "nonce-2"; client "proof-2" -> CONNACK 0x00 with data "welcome".
/// let script = ChallengeResponse::new("DEMO")
///     .round("nonce-1", "proof-1")
///     .round("nonce-2", "proof-2")
///     .success_data("welcome");
/// let mut builder = TestServer::builder();
/// builder.authenticator(script);
/// ```
#[derive(Debug, Clone)]
pub struct ChallengeResponse {
    method: String,
    rounds: Vec<(Bytes, Bytes)>,
    success_data: Option<Bytes>,
}

impl ChallengeResponse {
    /// A script for `method` with no rounds yet.
    pub fn new(method: impl Into<String>) -> Self {
        ChallengeResponse {
            method: method.into(),
            rounds: Vec::new(),
            success_data: None,
        }
    }

    /// Adds a round: the server sends `challenge` and expects `response`.
    pub fn round(mut self, challenge: impl Into<Bytes>, response: impl Into<Bytes>) -> Self {
        self.rounds.push((challenge.into(), response.into()));
        self
    }

    /// Authentication Data to send with the final success.
    pub fn success_data(mut self, data: impl Into<Bytes>) -> Self {
        self.success_data = Some(data.into());
        self
    }
}

impl Authenticator for ChallengeResponse {
    fn authenticate(&self, request: &AuthRequest<'_>) -> AuthOutcome {
        if request.method != self.method {
            return AuthOutcome::BadMethod;
        }
        let step = request.step as usize;
        if step > 0 {
            // Step k answers the challenge of round k-1.
            let Some((_, expected)) = self.rounds.get(step - 1) else {
                return AuthOutcome::Fail;
            };
            if request.data != Some(expected) {
                return AuthOutcome::Fail;
            }
        }
        match self.rounds.get(step) {
            Some((challenge, _)) => AuthOutcome::Continue(challenge.clone()),
            None => AuthOutcome::Success(self.success_data.clone()),
        }
    }
}
