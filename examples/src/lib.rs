//! Shared pieces of the `paho-examples` programs (`demo`, `pub`, `sub`): TLS from
//! mosquitto-style flags, the documented exit codes, and the connection setup of `pub` and
//! `sub`. Not a library for other crates: depend on `autopaho` instead.

use std::path::Path;

use autopaho::TlsOptions;

/// TLS options from `--cafile`, `--cert`/`--key` and `--insecure`; `None` when none is given
/// (the default connector then uses the public roots for `mqtts://` and `wss://`).
///
/// # Errors
///
/// A file that cannot be read, a `--cert` without `--key` (or the other way round), or PEM
/// that does not parse, as one line of text.
pub fn tls_from_flags(
    cafile: Option<&Path>,
    cert: Option<&Path>,
    key: Option<&Path>,
    insecure: bool,
) -> Result<Option<TlsOptions>, String> {
    if cafile.is_none() && cert.is_none() && key.is_none() && !insecure {
        return Ok(None);
    }
    let read = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    let mut b = TlsOptions::builder();
    if let Some(ca) = cafile {
        b = b.ca_pem(read(ca)?);
    }
    match (cert, key) {
        (Some(c), Some(k)) => b = b.client_cert_pem(read(c)?, read(k)?),
        (None, None) => {}
        _ => return Err("--cert and --key go together".into()),
    }
    if insecure {
        b = b.danger_accept_invalid_certs();
    }
    b.build().map(Some).map_err(|e| e.to_string())
}
