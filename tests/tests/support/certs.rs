//! A certificate authority of a test's own, for mutual TLS.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, Certificate, CertificateParams, DnType, IsCa, KeyPair};

/// A CA whose certificate is written to `ca.pem` in a directory, and which
/// issues client certificates into the same directory.
pub struct TestCa {
    pub dir: tempfile::TempDir,
    /// The CA certificate's file (for `--tls-client-ca`).
    pub file: PathBuf,
    cert: Certificate,
    key: KeyPair,
}

impl TestCa {
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, cert.pem()).unwrap();
        TestCa {
            dir,
            file,
            cert,
            key,
        }
    }

    /// A certificate for `name` (its common name) and its key, as files.
    pub fn issue(&self, name: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let at = |file: &str| -> PathBuf { Path::new(self.dir.path()).join(file) };
        let (cert_file, key_file) = (at(&format!("{name}.pem")), at(&format!("{name}-key.pem")));
        std::fs::write(&cert_file, cert.pem()).unwrap();
        std::fs::write(&key_file, key.serialize_pem()).unwrap();
        (cert_file, key_file)
    }
}
