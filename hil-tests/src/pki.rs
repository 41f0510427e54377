//! A throw-away PKI for the DICOM TLS tests, made with the `openssl` CLI in a temporary folder:
//! CAs, and certificates they issue with a chosen subject CN and SAN DNS names (plus IP
//! 127.0.0.1, so a server certificate fits loopback). Keys are RSA 2048, unencrypted PEM, which
//! rustls and DCMTK both read.

use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

pub struct Pki {
    pub dir: TempDir,
}

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("/usr/bin/openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Pki {
    pub fn new() -> Pki {
        Pki {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    /// A self-signed CA named `name` (files `<name>-ca.crt`, `<name>-ca.key`).
    pub fn ca(&self, name: &str) -> Issued {
        let (cert, key) = (format!("{name}-ca.crt"), format!("{name}-ca.key"));
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &cert,
                "-days",
                "2",
                "-subj",
                &format!("/CN=Test CA {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        Issued {
            cert: self.path(&cert),
            key: self.path(&key),
        }
    }

    /// A certificate issued by `ca` for subject CN `cn` and SAN DNS names `dns` (and IP
    /// 127.0.0.1), usable for server and client authentication; files `<name>.crt/.key`.
    pub fn issue(&self, ca: &Issued, name: &str, cn: &str, dns: &[&str]) -> Issued {
        let (cert, key, csr, ext) = (
            format!("{name}.crt"),
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.ext"),
        );
        let mut san: Vec<String> = dns.iter().map(|d| format!("DNS:{d}")).collect();
        san.push("IP:127.0.0.1".into());
        std::fs::write(
            self.path(&ext),
            format!(
                "basicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\n\
                 subjectKeyIdentifier=hash\n\
                 authorityKeyIdentifier=keyid\n\
                 subjectAltName={}\n",
                san.join(",")
            ),
        )
        .expect("write extensions");
        openssl(
            self.dir.path(),
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            self.dir.path(),
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca.cert.to_string_lossy(),
                "-CAkey",
                &ca.key.to_string_lossy(),
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext,
            ],
        );
        Issued {
            cert: self.path(&cert),
            key: self.path(&key),
        }
    }
}

impl Default for Pki {
    fn default() -> Self {
        Pki::new()
    }
}
