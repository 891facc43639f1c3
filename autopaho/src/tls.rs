//! TLS options: [`TlsOptions`] and its validating builder, which make a rustls
//! `ClientConfig` on the `ring` crypto provider.

use std::fmt;
use std::io;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use tokio_rustls::rustls;
use tokio_rustls::rustls::client::danger::{
    HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier,
};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::error::CertificateProblem;
use crate::{Error, ServerUrl};

/// How a TLS connection is secured: trusted roots, an optional client certificate, the
/// server name and ALPN. Cheap to clone (the rustls config is shared).
///
/// Built by [`TlsOptions::builder`], or from a rustls `ClientConfig` of your own
/// ([`TlsOptions::from_client_config`], for example with the platform verifier).
///
/// ```
/// # fn demo(ca_pem: &[u8], cert_pem: &[u8], key_pem: &[u8]) -> Result<(), autopaho::Error> {
/// use autopaho::TlsOptions;
/// let tls = TlsOptions::builder()
///     .ca_pem(ca_pem)                   // trust this CA (instead of the public roots)
///     .client_cert_pem(cert_pem, key_pem) // mutual TLS
///     .build()?;
/// # let _ = tls; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TlsOptions {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    accept_invalid_certs: bool,
}

impl fmt::Debug for TlsOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptions")
            .field("server_name", &self.server_name)
            .field("alpn", &self.config.alpn_protocols)
            .field(
                "client_auth",
                &self.config.client_auth_cert_resolver.has_certs(),
            )
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .finish_non_exhaustive()
    }
}

impl TlsOptions {
    /// A builder: public roots (webpki-roots), no client certificate, the URL's host as the
    /// server name, no ALPN, verification on.
    pub fn builder() -> TlsOptionsBuilder {
        TlsOptionsBuilder::default()
    }

    /// Options from a rustls config you built yourself (its verifier, roots, client auth and
    /// ALPN are used as they are). The server name is the URL's host.
    pub fn from_client_config(config: Arc<ClientConfig>) -> TlsOptions {
        TlsOptions {
            config,
            server_name: None,
            accept_invalid_certs: false,
        }
    }

    /// The rustls config used for every connection.
    pub fn client_config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// True when certificate verification is off
    /// ([`TlsOptionsBuilder::danger_accept_invalid_certs`]).
    pub fn accepts_invalid_certs(&self) -> bool {
        self.accept_invalid_certs
    }

    /// The name to send as SNI and to verify the certificate against: the override, or the
    /// URL's host (a DNS name or an IP address).
    pub fn server_name_for(&self, server: &ServerUrl) -> Result<ServerName<'static>, Error> {
        if let Some(name) = &self.server_name {
            return Ok(name.clone());
        }
        ServerName::try_from(server.host().to_string())
            .map_err(|_| Error::InvalidServerName(server.host().to_string()))
    }
}

/// Builds [`TlsOptions`]; [`TlsOptionsBuilder::build`] parses the PEM inputs and checks
/// everything, returning a typed [`Error`].
///
/// Roots: by default the public web roots of `webpki-roots` (compiled in, the same on every
/// machine). Adding a CA with [`ca_pem`](TlsOptionsBuilder::ca_pem) trusts exactly the
/// given CAs instead (as `mosquitto_pub --cafile` does); call
/// [`webpki_roots(true)`](TlsOptionsBuilder::webpki_roots) to trust both.
#[derive(Default)]
pub struct TlsOptionsBuilder {
    ca_pems: Vec<Vec<u8>>,
    webpki_roots: Option<bool>,
    client: Option<(Vec<u8>, Vec<u8>)>,
    server_name: Option<String>,
    alpn: Vec<Vec<u8>>,
    accept_invalid_certs: bool,
}

impl fmt::Debug for TlsOptionsBuilder {
    /// Never prints the client key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsOptionsBuilder")
            .field("ca_pems", &self.ca_pems.len())
            .field("webpki_roots", &self.webpki_roots)
            .field("client_cert", &self.client.is_some())
            .field("server_name", &self.server_name)
            .field("accept_invalid_certs", &self.accept_invalid_certs)
            .finish_non_exhaustive()
    }
}

impl TlsOptionsBuilder {
    /// Trusts the CA certificates in this PEM text (one or more `CERTIFICATE` sections).
    /// May be called again to add more. Once a CA is added, the public roots are no longer
    /// trusted unless [`webpki_roots(true)`](Self::webpki_roots) is set.
    pub fn ca_pem(mut self, pem: impl AsRef<[u8]>) -> Self {
        self.ca_pems.push(pem.as_ref().to_vec());
        self
    }

    /// Whether to trust the public web roots (`webpki-roots`). Default: yes when no CA is
    /// added, no when one is.
    pub fn webpki_roots(mut self, on: bool) -> Self {
        self.webpki_roots = Some(on);
        self
    }

    /// A client certificate chain (PEM, the leaf first) and its private key (PEM: PKCS#8,
    /// PKCS#1 or SEC1), for servers that require mutual TLS.
    pub fn client_cert_pem(mut self, chain: impl AsRef<[u8]>, key: impl AsRef<[u8]>) -> Self {
        self.client = Some((chain.as_ref().to_vec(), key.as_ref().to_vec()));
        self
    }

    /// The server name to send (SNI) and to verify the certificate against, instead of the
    /// URL's host: for a broker reached by IP address or through a tunnel.
    pub fn server_name(mut self, name: impl Into<String>) -> Self {
        self.server_name = Some(name.into());
        self
    }

    /// Offers an ALPN protocol (for example `mqtt`, which AWS IoT wants on port 443). May be
    /// called again; the order is the order of preference. None by default.
    pub fn alpn(mut self, protocol: impl AsRef<[u8]>) -> Self {
        self.alpn.push(protocol.as_ref().to_vec());
        self
    }

    /// Turns certificate verification **off**: any certificate, from anyone, for any name,
    /// is accepted, so anyone on the path can read and change the traffic. For a test bench
    /// only. The connector logs a `tracing` warning at every connect made with it.
    pub fn danger_accept_invalid_certs(mut self) -> Self {
        self.accept_invalid_certs = true;
        self
    }

    /// Parses the PEM inputs and builds the rustls config.
    pub fn build(self) -> Result<TlsOptions, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::TlsConfig(e.to_string()))?;

        let builder = if self.accept_invalid_certs {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAnyCert(provider)))
        } else {
            let mut roots = RootCertStore::empty();
            for pem in &self.ca_pems {
                let certs = parse_certs(pem, "CA certificates")?;
                for cert in certs {
                    roots.add(cert).map_err(|e| Error::Pem {
                        what: "CA certificates",
                        reason: format!("not usable as a trust anchor: {e}"),
                    })?;
                }
            }
            if self.webpki_roots.unwrap_or(self.ca_pems.is_empty()) {
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
            if roots.is_empty() {
                return Err(Error::TlsConfig(
                    "no trusted roots: add a CA or enable the webpki roots".into(),
                ));
            }
            builder.with_root_certificates(roots)
        };

        let mut config = match &self.client {
            None => builder.with_no_client_auth(),
            Some((chain, key)) => {
                let chain = parse_certs(chain, "client certificate chain")?;
                let key = PrivateKeyDer::from_pem_slice(key).map_err(|e| Error::Pem {
                    what: "client private key",
                    reason: pem_reason(e, "PRIVATE KEY"),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| Error::TlsConfig(format!("client certificate: {e}")))?
            }
        };
        config.alpn_protocols = self.alpn;

        let server_name = match self.server_name {
            None => None,
            Some(name) => Some(
                ServerName::try_from(name.clone()).map_err(|_| Error::InvalidServerName(name))?,
            ),
        };
        Ok(TlsOptions {
            config: Arc::new(config),
            server_name,
            accept_invalid_certs: self.accept_invalid_certs,
        })
    }
}

fn parse_certs(pem: &[u8], what: &'static str) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Pem {
            what,
            reason: pem_reason(e, "CERTIFICATE"),
        })?;
    if certs.is_empty() {
        return Err(Error::Pem {
            what,
            reason: "no CERTIFICATE section found".into(),
        });
    }
    Ok(certs)
}

fn pem_reason(e: rustls_pki_types::pem::Error, section: &str) -> String {
    match e {
        rustls_pki_types::pem::Error::NoItemsFound => format!("no {section} section found"),
        e => e.to_string(),
    }
}

/// Turns an error from a TLS handshake into a typed [`Error`]: certificate problems become
/// [`Error::CertificateVerification`], other rustls errors [`Error::Tls`], and plain socket
/// errors [`Error::Io`].
pub(crate) fn handshake_error(server: &ServerUrl, e: &io::Error) -> Error {
    let Some(tls) = e
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return Error::io(server, e);
    };
    match tls {
        rustls::Error::InvalidCertificate(c) => Error::CertificateVerification {
            server: server.to_string(),
            problem: certificate_problem(c),
        },
        other => Error::Tls {
            server: server.to_string(),
            reason: other.to_string(),
        },
    }
}

fn certificate_problem(e: &rustls::CertificateError) -> CertificateProblem {
    use rustls::CertificateError as C;
    match e {
        C::UnknownIssuer => CertificateProblem::UnknownIssuer,
        C::Expired | C::ExpiredContext { .. } => CertificateProblem::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => CertificateProblem::NotValidYet,
        C::NotValidForName | C::NotValidForNameContext { .. } => CertificateProblem::NameMismatch,
        C::Revoked => CertificateProblem::Revoked,
        C::BadSignature => CertificateProblem::BadSignature,
        other => CertificateProblem::Other(other.to_string()),
    }
}

/// The verifier behind [`TlsOptionsBuilder::danger_accept_invalid_certs`]: accepts every
/// certificate but still checks the handshake signatures (so the peer holds the key of the
/// certificate it sent, whoever that is).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_build_with_public_roots() {
        let tls = TlsOptions::builder().build().unwrap();
        assert!(!tls.accepts_invalid_certs());
        let url = ServerUrl::parse("mqtts://broker.example.com").unwrap();
        assert_eq!(
            tls.server_name_for(&url).unwrap(),
            ServerName::try_from("broker.example.com").unwrap()
        );
        let ip = ServerUrl::parse("mqtts://127.0.0.1").unwrap();
        assert!(matches!(
            tls.server_name_for(&ip).unwrap(),
            ServerName::IpAddress(_)
        ));
    }

    #[test]
    fn bad_pem_is_a_typed_error() {
        let e = TlsOptions::builder().ca_pem("not pem").build().unwrap_err();
        assert!(
            matches!(
                &e,
                Error::Pem {
                    what: "CA certificates",
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("no CERTIFICATE section"), "{e}");
        let broken = "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n";
        let e = TlsOptions::builder().ca_pem(broken).build().unwrap_err();
        assert!(matches!(e, Error::Pem { .. }), "{e:?}");
        let e = TlsOptions::builder()
            .client_cert_pem("", "")
            .build()
            .unwrap_err();
        assert!(
            matches!(
                e,
                Error::Pem {
                    what: "client certificate chain",
                    ..
                }
            ),
            "{e:?}"
        );
        let e = TlsOptions::builder().server_name("").build().unwrap_err();
        assert!(matches!(e, Error::InvalidServerName(_)), "{e:?}");
        let e = TlsOptions::builder()
            .webpki_roots(false)
            .build()
            .unwrap_err();
        assert!(matches!(e, Error::TlsConfig(_)), "{e:?}");
        assert!(e.is_config());
    }

    #[test]
    fn debug_hides_keys() {
        let b = TlsOptions::builder().client_cert_pem("CERT", "SECRETKEY");
        assert!(!format!("{b:?}").contains("SECRETKEY"));
    }
}
