//! TLS to PostgreSQL written the way libpq users write it: `sslmode` (disable, prefer,
//! require, verify-ca, verify-full) and `sslrootcert` (a PEM file, or `system`) in the
//! URL or key=value string, or `PGSSLMODE` and `PGSSLROOTCERT` in the environment.
//!
//! tokio-postgres knows only disable, prefer and require, and no CA, so those two
//! settings are taken out of the text before it parses the rest; the TLS side is rustls.
//! As in libpq: `prefer` (the default) and `require` encrypt without checking who
//! answers, `require` with a CA checks the chain like `verify-ca`, `verify-ca` checks the
//! chain, `verify-full` also the host name.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use percent_encoding::percent_decode_str;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore};
pub use tokio_postgres_rustls::MakeRustlsConnect;

/// How much TLS a connection insists on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, unverified; plain otherwise (libpq's default).
    Prefer,
    /// TLS or no connection, unverified.
    Require,
    /// TLS with a certificate chain to the given CA.
    VerifyCa,
    /// TLS with a chain to the given CA, issued for the host connected to.
    VerifyFull,
}

impl SslMode {
    /// The name libpq gives it.
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = PgTlsError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "disable" => Ok(SslMode::Disable),
            "prefer" => Ok(SslMode::Prefer),
            "require" => Ok(SslMode::Require),
            "verify-ca" => Ok(SslMode::VerifyCa),
            "verify-full" => Ok(SslMode::VerifyFull),
            other => Err(PgTlsError::UnsupportedSslMode(other.to_string())),
        }
    }
}

/// Where the CA certificates come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CaSource {
    /// A PEM file (`sslrootcert=/path`, `PGSSLROOTCERT`).
    File(PathBuf),
    /// PEM text already read (the operator's copy of `spec.database.caSecretRef`).
    Pem(Vec<u8>),
    /// The operating system's trust store (`sslrootcert=system`).
    System,
}

impl CaSource {
    fn from_setting(value: &str) -> CaSource {
        if value == "system" {
            CaSource::System
        } else {
            CaSource::File(PathBuf::from(value))
        }
    }

    fn origin(&self) -> String {
        match self {
            CaSource::File(path) => path.display().to_string(),
            CaSource::Pem(_) => "from the Secret".to_string(),
            CaSource::System => "system trust store".to_string(),
        }
    }
}

/// Settings that apply when the URL does not say: libpq's environment variables.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsDefaults {
    /// `PGSSLMODE`.
    pub sslmode: Option<String>,
    /// `PGSSLROOTCERT`, or the operator's copy of the CA Secret.
    pub ca: Option<CaSource>,
}

impl TlsDefaults {
    /// `PGSSLMODE` and `PGSSLROOTCERT` of this process.
    pub fn from_env() -> TlsDefaults {
        let read = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
        TlsDefaults {
            sslmode: read("PGSSLMODE"),
            ca: read("PGSSLROOTCERT").map(|v| CaSource::from_setting(&v)),
        }
    }
}

/// Why a connection cannot even be tried; every message names the setting at fault and
/// none carries the URL (it holds the password).
#[derive(Debug, thiserror::Error)]
pub enum PgTlsError {
    #[error("not a PostgreSQL URL or key=value connection string: {0}")]
    Parse(#[source] tokio_postgres::Error),
    #[error(
        "sslmode {0:?} is not supported: use disable, prefer, require, verify-ca or verify-full"
    )]
    UnsupportedSslMode(String),
    #[error(
        "sslmode={0} needs the CA that signed the server's certificate: set sslrootcert in the \
         URL, PGSSLROOTCERT, or spec.database.caSecretRef"
    )]
    MissingCa(&'static str),
    #[error("reading the PostgreSQL CA {path}: {source}")]
    ReadCa {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the PostgreSQL CA {0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("the PostgreSQL CA {origin} holds a certificate that cannot be used: {source}")]
    BadCertificate {
        origin: String,
        #[source]
        source: rustls::Error,
    },
    #[error("the system trust store could not be read: {0}")]
    SystemStore(String),
    #[error("building the TLS verifier: {0}")]
    Verifier(String),
}

/// A parsed connection target: tokio-postgres settings plus the TLS connector.
#[derive(Clone)]
pub struct PgTarget {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
    pub mode: SslMode,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// Parses a `postgres://` URL or key=value string, its `sslmode` and `sslrootcert`
/// winning over `defaults`.
pub fn parse(text: &str, defaults: &TlsDefaults) -> Result<PgTarget, PgTlsError> {
    let (rest, ours) = take_tls_settings(text);
    let mut config: tokio_postgres::Config = rest.parse().map_err(PgTlsError::Parse)?;
    let mode = match ours.sslmode.or_else(|| defaults.sslmode.clone()) {
        Some(value) => value.parse()?,
        None => SslMode::Prefer,
    };
    let ca = ours
        .sslrootcert
        .map(|v| CaSource::from_setting(&v))
        .or_else(|| defaults.ca.clone());
    // libpq: `require` with a CA at hand checks the chain as `verify-ca` does.
    let mode = match (mode, &ca) {
        (SslMode::Require, Some(_)) => SslMode::VerifyCa,
        (mode, _) => mode,
    };
    config.ssl_mode(match mode {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        _ => tokio_postgres::config::SslMode::Require,
    });
    let tls = MakeRustlsConnect::new(client_config(mode, ca.as_ref())?);
    Ok(PgTarget { config, tls, mode })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(mode: SslMode, ca: Option<&CaSource>) -> Result<ClientConfig, PgTlsError> {
    let provider = provider();
    let chain = match mode {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => None,
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let ca = ca.ok_or(PgTlsError::MissingCa(mode.as_str()))?;
            let roots = Arc::new(root_store(ca)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| PgTlsError::Verifier(e.to_string()))?;
            Some(webpki)
        }
    };
    let verifier = Arc::new(ServerCheck {
        provider: provider.clone(),
        chain,
        names: mode == SslMode::VerifyFull,
    });
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgTlsError::Verifier(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(config)
}

fn root_store(ca: &CaSource) -> Result<RootCertStore, PgTlsError> {
    let origin = ca.origin();
    let certificates: Vec<CertificateDer<'static>> = match ca {
        CaSource::System => {
            let loaded = rustls_native_certs::load_native_certs();
            if loaded.certs.is_empty() {
                let why = loaded
                    .errors
                    .first()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "it holds no certificate".to_string());
                return Err(PgTlsError::SystemStore(why));
            }
            loaded.certs
        }
        CaSource::File(path) => {
            let pem = std::fs::read(path).map_err(|source| PgTlsError::ReadCa {
                path: origin.clone(),
                source,
            })?;
            pem_certificates(&pem)
        }
        CaSource::Pem(pem) => pem_certificates(pem),
    };
    if certificates.is_empty() {
        return Err(PgTlsError::NoCertificate(origin));
    }
    let mut store = RootCertStore::empty();
    for certificate in certificates {
        store
            .add(certificate)
            .map_err(|source| PgTlsError::BadCertificate {
                origin: origin.clone(),
                source,
            })?;
    }
    Ok(store)
}

fn pem_certificates(pem: &[u8]) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem)
        .filter_map(|c| c.ok())
        .collect()
}

/// What the server's certificate must prove, by mode. `prefer` and `require`: nothing
/// (encryption only, as in libpq). `verify-ca`: a chain to the CA, whatever name it
/// carries (webpki checks the chain before the name, so a name mismatch means the chain
/// held). `verify-full`: the chain and the host name. The handshake signatures are
/// checked in every mode.
#[derive(Debug)]
struct ServerCheck {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
    names: bool,
}

impl ServerCertVerifier for ServerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.names => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `sslmode` and `sslrootcert` as the text gave them.
#[derive(Debug, Default, PartialEq, Eq)]
struct TlsSettings {
    sslmode: Option<String>,
    sslrootcert: Option<String>,
}

impl TlsSettings {
    /// Keeps `key`'s value when it is one of ours; says whether it was.
    fn take(&mut self, key: &str, value: String) -> bool {
        match key {
            "sslmode" => self.sslmode = Some(value),
            "sslrootcert" => self.sslrootcert = Some(value),
            _ => return false,
        }
        true
    }
}

/// Splits `sslmode` and `sslrootcert` off a URL's query or a key=value string; the rest
/// is returned as written.
fn take_tls_settings(text: &str) -> (String, TlsSettings) {
    let mut ours = TlsSettings::default();
    let is_url = text.starts_with("postgres://") || text.starts_with("postgresql://");
    if is_url {
        let Some((base, query)) = text.split_once('?') else {
            return (text.to_string(), ours);
        };
        let kept: Vec<&str> = query
            .split('&')
            .filter(|pair| {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let key = percent_decode_str(key).decode_utf8_lossy();
                let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
                !ours.take(&key, value)
            })
            .collect();
        let rest = if kept.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        return (rest, ours);
    }
    let mut rest = String::new();
    for pair in key_value_pairs(text) {
        if !ours.take(&pair.key, pair.value) {
            if !rest.is_empty() {
                rest.push(' ');
            }
            rest.push_str(pair.raw);
        }
    }
    (rest, ours)
}

struct Pair<'a> {
    key: String,
    value: String,
    raw: &'a str,
}

/// The `key = value` pairs of a libpq connection string; values may be single-quoted
/// with backslash escapes. A malformed tail is returned raw for tokio-postgres to
/// reject with its own message.
fn key_value_pairs(text: &str) -> Vec<Pair<'_>> {
    let bytes = text.as_bytes();
    let mut pairs = Vec::new();
    let mut i = 0;
    let skip_space = |mut i: usize| {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_space(i);
        if i >= bytes.len() {
            return pairs;
        }
        let start = i;
        while i < bytes.len() && bytes[i] != b'=' && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        let key = text[start..i].to_string();
        i = skip_space(i);
        if i >= bytes.len() || bytes[i] != b'=' {
            pairs.push(Pair {
                key: String::new(),
                value: String::new(),
                raw: text[start..].trim_end(),
            });
            return pairs;
        }
        i = skip_space(i + 1);
        let mut value = String::new();
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = text[i..].chars().next().unwrap_or_default();
                value.push(c);
                i += c.len_utf8();
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                if bytes[i] == b'\\' && i + 1 < bytes.len() {
                    i += 1;
                }
                let c = text[i..].chars().next().unwrap_or_default();
                value.push(c);
                i += c.len_utf8();
            }
        }
        pairs.push(Pair {
            key,
            value,
            raw: &text[start..i],
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> TlsDefaults {
        TlsDefaults::default()
    }

    #[test]
    fn url_settings_are_taken_out_and_the_rest_kept_as_written() {
        let (rest, ours) = take_tls_settings(
            "postgres://u:p%40ss@db:5432/outbox?application_name=x&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.crt",
        );
        assert_eq!(
            rest,
            "postgres://u:p%40ss@db:5432/outbox?application_name=x"
        );
        assert_eq!(ours.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(ours.sslrootcert.as_deref(), Some("/etc/ca.crt"));

        let (rest, _) = take_tls_settings("postgresql://db/outbox?sslmode=require");
        assert_eq!(rest, "postgresql://db/outbox");
    }

    #[test]
    fn key_value_settings_are_taken_out_quoted_values_included() {
        let (rest, ours) = take_tls_settings(
            "host=db user=outbox password='s3 cr\\'t' sslmode = verify-ca sslrootcert='/etc/my ca.pem' dbname=outbox",
        );
        assert_eq!(
            rest,
            "host=db user=outbox password='s3 cr\\'t' dbname=outbox"
        );
        assert_eq!(ours.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(ours.sslrootcert.as_deref(), Some("/etc/my ca.pem"));
        let config: tokio_postgres::Config = rest.parse().expect("rest parses");
        assert_eq!(config.get_password(), Some(&b"s3 cr't"[..]));
    }

    #[test]
    fn prefer_is_the_default_and_disable_turns_tls_off() {
        let target = parse("postgres://db/outbox", &none()).expect("parses");
        assert_eq!(target.mode, SslMode::Prefer);
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Prefer
        );
        let target = parse("host=db sslmode=disable", &none()).expect("parses");
        assert_eq!(
            target.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn the_url_wins_over_the_environment() {
        let defaults = TlsDefaults {
            sslmode: Some("require".into()),
            ca: None,
        };
        let target = parse("postgres://db/outbox?sslmode=disable", &defaults).expect("parses");
        assert_eq!(target.mode, SslMode::Disable);
        let target = parse("postgres://db/outbox", &defaults).expect("parses");
        assert_eq!(target.mode, SslMode::Require);
    }

    #[test]
    fn verifying_modes_without_a_ca_are_refused_naming_where_to_put_one() {
        for mode in ["verify-ca", "verify-full"] {
            let err =
                parse(&format!("postgres://db/outbox?sslmode={mode}"), &none()).expect_err("no CA");
            let text = err.to_string();
            assert!(text.contains(mode), "{text}");
            assert!(text.contains("sslrootcert"), "{text}");
            assert!(text.contains("caSecretRef"), "{text}");
        }
    }

    #[test]
    fn unknown_sslmodes_and_unreadable_cas_are_named() {
        let err = parse("postgres://db/outbox?sslmode=allow", &none()).expect_err("allow");
        assert!(err.to_string().contains("\"allow\""), "{err}");
        let err = parse(
            "postgres://db/outbox?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
            &none(),
        )
        .expect_err("missing file");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let defaults = TlsDefaults {
            sslmode: None,
            ca: Some(CaSource::Pem(b"not a certificate".to_vec())),
        };
        let err = parse("postgres://db/outbox?sslmode=verify-ca", &defaults).expect_err("no PEM");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }

    #[test]
    fn require_with_a_ca_checks_the_chain_as_libpq_does() {
        let dir = std::env::temp_dir().join(format!("pg-tls-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let ca = dir.join("ca.pem");
        // A well-formed PEM block that is no certificate: the CA is read, then refused.
        std::fs::write(
            &ca,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .expect("write");
        let err = parse(
            &format!("host=db sslmode=require sslrootcert={}", ca.display()),
            &none(),
        )
        .expect_err("require + CA verifies, and this CA is unusable");
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(err, PgTlsError::BadCertificate { .. }), "{err:?}");
    }
}
