//! TLS material: the operator's certificate, or a local CA and a server
//! certificate for localhost generated once in `<data-dir>/tls/`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// File names inside `<data-dir>/tls/`.
pub const CA_FILE: &str = "ca.pem";
const CA_KEY_FILE: &str = "ca-key.pem";
const CERT_FILE: &str = "server.pem";
const KEY_FILE: &str = "server-key.pem";

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Some of the generated TLS files are missing: generating new ones
    /// would replace the CA that clients trust.
    #[error("{dir}: {missing} is missing while the other generated TLS files are there; restore it, or remove the directory to generate a new CA (which clients must then trust)")]
    Incomplete {
        /// The TLS directory.
        dir: PathBuf,
        /// The first missing file.
        missing: &'static str,
    },
    /// Certificate generation failed.
    #[error("cannot generate a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// rustls refused the certificate or key.
    #[error("TLS configuration rejected: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Where the server's certificate came from.
#[derive(Debug, Clone)]
pub enum TlsSource {
    /// Files given by the operator.
    Files,
    /// Generated locally; clients trust this CA file.
    Generated {
        /// The CA certificate clients should trust.
        ca_file: PathBuf,
    },
}

/// Builds the rustls server configuration.
pub fn server_config(
    files: Option<&(PathBuf, PathBuf)>,
    data_dir: &Path,
    client_ca: Option<&Path>,
) -> Result<(Arc<ServerConfig>, TlsSource), TlsError> {
    let (cert_path, key_path, source) = match files {
        Some((c, k)) => (c.clone(), k.clone(), TlsSource::Files),
        None => {
            let dir = data_dir.join("tls");
            ensure_local_ca(&dir)?;
            (
                dir.join(CERT_FILE),
                dir.join(KEY_FILE),
                TlsSource::Generated {
                    ca_file: dir.join(CA_FILE),
                },
            )
        }
    };
    let certs = load_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| TlsError::Pem {
        path: key_path.clone(),
        reason: format!("no private key: {e}"),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()?;
    // Mutual TLS: clients must present a certificate the CA signed.
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(path)? {
                roots.add(cert)?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| TlsError::Pem {
                path: path.to_owned(),
                reason: format!("unusable client CA: {e}"),
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"spread/1".to_vec()];
    Ok((Arc::new(config), source))
}

/// Reads every certificate of a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_owned(),
            reason: "no certificate found".into(),
        });
    }
    Ok(certs)
}

/// Creates the local CA and a localhost server certificate unless present.
fn ensure_local_ca(dir: &Path) -> Result<(), TlsError> {
    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Io { path, source }
    };
    let files = [CERT_FILE, KEY_FILE, CA_FILE];
    let present = files.iter().filter(|f| dir.join(f).exists()).count();
    if present == files.len() {
        return Ok(());
    }
    if present > 0 {
        let missing = files
            .iter()
            .find(|f| !dir.join(f).exists())
            .copied()
            .unwrap_or(CA_FILE);
        return Err(TlsError::Incomplete {
            dir: dir.to_owned(),
            missing,
        });
    }
    fs::create_dir_all(dir).map_err(io(dir))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Spread local CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "Spread broker");
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    write_file(&dir.join(CA_KEY_FILE), &ca_key.serialize_pem(), true)?;
    write_file(&dir.join(CA_FILE), &ca_cert.pem(), false)?;
    write_file(&dir.join(KEY_FILE), &key.serialize_pem(), true)?;
    // The server's chain: its certificate, then the CA's.
    write_file(
        &dir.join(CERT_FILE),
        &format!("{}{}", cert.pem(), ca_cert.pem()),
        false,
    )?;
    Ok(())
}

fn write_file(path: &Path, contents: &str, secret: bool) -> Result<(), TlsError> {
    let mode = if secret { 0o600 } else { 0o644 };
    crate::durable::write(path, contents.as_bytes(), mode).map_err(|f| TlsError::Io {
        path: f.path,
        source: f.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_once_and_reuses() {
        let dir = std::env::temp_dir().join(format!("spread-tls-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let (_, source) = server_config(None, &dir, None).unwrap();
        let ca = match source {
            TlsSource::Generated { ca_file } => ca_file,
            TlsSource::Files => panic!("expected generated"),
        };
        let first = fs::read(&ca).unwrap();
        server_config(None, &dir, None).unwrap();
        assert_eq!(fs::read(&ca).unwrap(), first, "the CA must not change");
        // One file lost: an error naming it, never a new CA.
        let tls_dir = ca.parent().unwrap().to_owned();
        fs::remove_file(tls_dir.join(KEY_FILE)).unwrap();
        let err = server_config(None, &dir, None).err().unwrap();
        assert!(matches!(err, TlsError::Incomplete { .. }), "{err}");
        assert_eq!(fs::read(&ca).unwrap(), first, "the CA must not change");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_files_are_named_in_the_error() {
        let files = (
            PathBuf::from("/nonexistent/c.pem"),
            PathBuf::from("/nonexistent/k.pem"),
        );
        let err = server_config(Some(&files), Path::new("/tmp"), None).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/c.pem"), "{err}");
    }
}

/// One DER element: (tag, contents, rest).
fn der(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |l, b| (l << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// The subject's common name (or, lacking one, its first attribute) of a
/// DER certificate: the identity of a client authenticated by mutual TLS.
/// The certificate is parsed by webpki (the parser rustls verified it
/// with); only the subject's attributes are read here, since webpki gives
/// the subject as raw DER.
pub fn subject_name(cert: &[u8]) -> Option<String> {
    const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];
    let der_cert = CertificateDer::from(cert);
    let parsed = webpki::EndEntityCert::try_from(&der_cert).ok()?;
    // Name ::= SEQUENCE OF SET OF { type OID, value }: the outer SEQUENCE
    // is already stripped.
    let mut names = parsed.subject();
    let mut first = None;
    while !names.is_empty() {
        let (_, set, next) = der(names)?;
        names = next;
        let (_, attribute, _) = der(set)?;
        let (_, oid, value) = der(attribute)?;
        let (_, text, _) = der(value)?;
        let text = String::from_utf8_lossy(text).into_owned();
        if oid == COMMON_NAME {
            return Some(text);
        }
        first.get_or_insert(text);
    }
    first
}

#[cfg(test)]
mod subject_tests {
    use super::*;

    #[test]
    fn the_common_name_of_a_generated_certificate() {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["device-9.local".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params
            .distinguished_name
            .push(DnType::CommonName, "device-9");
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(subject_name(cert.der()).as_deref(), Some("device-9"));
        assert_eq!(subject_name(b"\x30\x03\x02\x01"), None);
    }
}
