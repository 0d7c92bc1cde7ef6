//! rustls client configuration from a [`Trust`].

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig as RustlsConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;

use crate::config::Trust;
use crate::Error;

/// Adds the CA certificates of a PEM file; a file without one is an error.
fn add_pem_file(roots: &mut RootCertStore, path: &std::path::Path) -> Result<(), Error> {
    let fail = |e: &dyn std::fmt::Display| Error::Tls(format!("{}: {e}", path.display()));
    let mut added = 0;
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| fail(&e))? {
        roots
            .add(cert.map_err(|e| fail(&e))?)
            .map_err(|e| fail(&e))?;
        added += 1;
    }
    if added == 0 {
        return Err(fail(&"no certificate"));
    }
    Ok(())
}

/// Adds the operating system's root certificates that parse.
fn add_system_roots(roots: &mut RootCertStore) {
    for cert in rustls_native_certs::load_native_certs().certs {
        // Skip the odd unparsable system certificate.
        let _ = roots.add(cert);
    }
}

/// Builds the rustls configuration for `trust`, presenting `client_cert`
/// (certificate chain and key, PEM files) when the broker asks for one.
pub fn client_config(
    trust: &Trust,
    client_cert: Option<&(std::path::PathBuf, std::path::PathBuf)>,
) -> Result<Arc<RustlsConfig>, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = RustlsConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls(e.to_string()))?;
    let wants_cert = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny(provider))),
        Trust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            add_pem_file(&mut roots, path)?;
            builder.with_root_certificates(roots)
        }
        Trust::System => {
            let mut roots = RootCertStore::empty();
            add_system_roots(&mut roots);
            if roots.is_empty() {
                return Err(Error::Tls(
                    "no system root certificates found; pass a CA file".into(),
                ));
            }
            builder.with_root_certificates(roots)
        }
        Trust::SystemAndCaFile(path) => {
            let mut roots = RootCertStore::empty();
            add_system_roots(&mut roots);
            add_pem_file(&mut roots, path)?;
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match client_cert {
        None => wants_cert.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
            wants_cert
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls(e.to_string()))?
        }
    };
    config.alpn_protocols = vec![b"spread/1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts any server certificate but still checks handshake signatures.
#[derive(Debug)]
struct AcceptAny(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAny {
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
        verify_tls12_signature(
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
        verify_tls13_signature(
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
