//! Enhanced authentication (MQTT v5 section 4.12): the [`Authenticator`] trait.

use bytes::Bytes;

use crate::Error;

/// One side of an enhanced-authentication exchange (SCRAM, Kerberos, a token scheme, ...).
///
/// The client sends [`method`](Authenticator::method) and
/// [`initial_data`](Authenticator::initial_data) in CONNECT (and in the AUTH that starts a
/// re-authentication, [`Client::reauthenticate`](crate::Client::reauthenticate)); each AUTH
/// with reason 0x18 (Continue authentication) from the server is passed to
/// [`challenge`](Authenticator::challenge), whose answer goes back in an AUTH 0x18; the
/// exchange ends with CONNACK (or AUTH 0x00 when re-authenticating), whose authentication data
/// is passed to [`success`](Authenticator::success).
///
/// The methods run on the connection's task: they must not block. Authentication data is
/// never logged.
pub trait Authenticator: Send + 'static {
    /// The Authentication Method (for example `"SCRAM-SHA-1"`).
    fn method(&self) -> &str;

    /// The Authentication Data for CONNECT, or for the AUTH 0x19 that starts a
    /// re-authentication. `reauth` says which.
    fn initial_data(&mut self, reauth: bool) -> Result<Option<Bytes>, Error>;

    /// Answers the server's challenge (the data of an AUTH with reason 0x18). An error aborts
    /// the exchange: the client disconnects (reason 0x87 Not authorized is not sent by
    /// clients; it uses 0x80 Unspecified error).
    fn challenge(&mut self, data: Option<&Bytes>) -> Result<Option<Bytes>, Error>;

    /// The exchange succeeded; `data` is the server's final Authentication Data, if any. An
    /// error here (the server failed to prove itself) closes the connection.
    fn success(&mut self, data: Option<&Bytes>) -> Result<(), Error> {
        let _ = data;
        Ok(())
    }
}
