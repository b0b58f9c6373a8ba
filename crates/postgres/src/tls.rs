//! TLS for PostgreSQL connections, with libpq's `sslmode` semantics, on rustls.
//!
//! | sslmode       | encrypted | chain verified                      | host name verified |
//! |---------------|-----------|-------------------------------------|--------------------|
//! | `disable`     | no        | -                                   | -                  |
//! | `prefer`      | if offered| no                                  | no                 |
//! | `require`     | yes       | only if a root certificate is given | no                 |
//! | `verify-ca`   | yes       | yes                                 | no                 |
//! | `verify-full` | yes       | yes                                 | yes                |
//!
//! The root certificate comes from `sslrootcert` (a PEM file, or `system` for the operating
//! system's trust store), else `~/.postgresql/root.crt` as in libpq. A client certificate comes
//! from `sslcert`/`sslkey`. "Not verified" still means a real TLS handshake whose signatures
//! are checked; only the certificate's chain and name are not judged.

use pgtide_core::endpoint::{ConnUrl, SslMode};
use pgtide_core::{Error, ErrorKind, Result};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::PathBuf;
use std::sync::Arc;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_error(url: &ConnUrl, msg: String) -> Error {
    Error::new(
        ErrorKind::Prerequisite,
        format!("TLS setup for {url}: {msg}"),
    )
}

fn default_root_cert() -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os("HOME")?).join(".postgresql/root.crt");
    p.is_file().then_some(p)
}

fn load_roots(url: &ConnUrl, spec: &str) -> Result<RootCertStore> {
    let mut store = RootCertStore::empty();
    if spec == "system" {
        let res = rustls_native_certs::load_native_certs();
        for c in res.certs {
            let _ = store.add(c);
        }
        if store.is_empty() {
            return Err(
                tls_error(url, "the system trust store holds no certificates".into())
                    .with_hint("install ca-certificates, or give sslrootcert=/path/to/ca.pem"),
            );
        }
        return Ok(store);
    }
    let pem = std::fs::read(spec)
        .map_err(|e| tls_error(url, format!("cannot read sslrootcert {spec}")).with_source(e))?;
    let mut reader = std::io::BufReader::new(pem.as_slice());
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert =
            cert.map_err(|e| tls_error(url, format!("bad certificate in {spec}")).with_source(e))?;
        store.add(cert).map_err(|e| {
            tls_error(url, format!("unusable certificate in {spec}")).with_source(e)
        })?;
    }
    if store.is_empty() {
        return Err(tls_error(url, format!("{spec} holds no PEM certificate"))
            .with_hint("sslrootcert must be a PEM file with the CA certificate(s)"));
    }
    Ok(store)
}

/// Verifies signatures but accepts any certificate (`prefer`, `require` without a root).
#[derive(Debug)]
struct AcceptAnyCert(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

/// Verifies the chain against the roots but not the host name (`verify-ca`).
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Ok(v) => Ok(v),
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            Err(e) => Err(e),
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

fn client_auth(
    url: &ConnUrl,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>> {
    let (Some(cert), Some(key)) = (&url.sslcert, &url.sslkey) else {
        if url.sslcert.is_some() != url.sslkey.is_some() {
            return Err(tls_error(
                url,
                "sslcert and sslkey must be given together".into(),
            ));
        }
        return Ok(None);
    };
    let cert_pem = std::fs::read(cert).map_err(|e| {
        tls_error(url, format!("cannot read sslcert {}", cert.display())).with_source(e)
    })?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| {
            tls_error(url, format!("bad certificate in {}", cert.display())).with_source(e)
        })?;
    let key_pem = std::fs::read(key).map_err(|e| {
        tls_error(url, format!("cannot read sslkey {}", key.display())).with_source(e)
    })?;
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| tls_error(url, format!("bad key in {}", key.display())).with_source(e))?
        .ok_or_else(|| tls_error(url, format!("{} holds no private key", key.display())))?;
    Ok(Some((certs, key)))
}

/// The rustls configuration for `url`, or `None` when TLS is disabled.
pub fn client_config(url: &ConnUrl) -> Result<Option<ClientConfig>> {
    if url.sslmode == SslMode::Disable {
        return Ok(None);
    }
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(url, "no usable TLS protocol version".into()).with_source(e))?;
    let root_spec = url
        .sslrootcert
        .clone()
        .or_else(|| default_root_cert().map(|p| p.display().to_string()));
    let verifier: Arc<dyn ServerCertVerifier> = match (url.sslmode, root_spec) {
        (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
            return Err(tls_error(
                url,
                format!("sslmode={} needs a root certificate", url.sslmode.as_str()),
            )
            .with_hint("add sslrootcert=/path/to/ca.pem (or sslrootcert=system) to the URL"));
        }
        (SslMode::Disable | SslMode::Prefer, _) | (SslMode::Require, None) => {
            Arc::new(AcceptAnyCert(provider.clone()))
        }
        (mode, Some(spec)) => {
            let roots = load_roots(url, &spec)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .map_err(|e| {
                        tls_error(url, "cannot build the certificate verifier".into())
                            .with_source(e)
                    })?;
            if mode == SslMode::VerifyFull {
                webpki
            } else {
                Arc::new(ChainOnly(webpki))
            }
        }
    };
    let builder = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let config = match client_auth(url)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| tls_error(url, "unusable client certificate".into()).with_source(e))?,
        None => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}
