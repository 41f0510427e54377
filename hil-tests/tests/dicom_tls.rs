//! DICOM TLS (PS3.15 annex B, BCP 195 profile) against DCMTK built with OpenSSL: the appliance's
//! TLS listener with mutual TLS, the binding of an AE title to a client certificate, and our
//! SCU delivering to a DCMTK `storescp` that requires TLS. What must stay true: only a client
//! with a certificate from the configured CA gets an association on the TLS port; plain DICOM
//! on that port never reaches the DICOM layer; an AE title bound to a TLS identity is refused
//! (A-ASSOCIATE-RJ, reason `tls_identity`) with any other certificate and over plain TCP; a
//! connection that never handshakes loses its slot at the ARTIM deadline.
//!
//! Certificates come from a throw-away PKI (`hil_tests::pki`): the site CA issues the
//! appliance's server certificate and the good clients' certificates; an attacker's CA issues a
//! client certificate with the very same names (only the issuer differs).

use hil_tests::appliance::Appliance;
use hil_tests::fixtures::CtSeries;
use hil_tests::peers::{files_below, start_storescp_with, ECHOSCU, STORESCU};
use hil_tests::pki::{Issued, Pki};
use hil_tests::{free_port, wait_until};
use pacs_bridge::scu::{self, Delivered, Destination, ScuConfig, ScuError};
use pacs_bridge::tls::ClientTls;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The identity the calling AE title `CT1` is bound to.
const CT1_IDENTITY: &str = "ct1.site.example";

struct Site {
    pki: Pki,
    ca: Issued,
    server: Issued,
    /// Site CA, CN storescu.site.example (STORESCU and ECHOSCU are not bound to an identity).
    client: Issued,
    /// Site CA, the identity CT1 is bound to.
    ct1: Issued,
    /// Site CA, a valid certificate for another identity.
    other: Issued,
    /// The attacker's CA, with the names of `ct1`.
    foreign: Issued,
}

impl Site {
    fn new() -> Site {
        let pki = Pki::new();
        let ca = pki.ca("site");
        let server = pki.issue(&ca, "appliance", "radiant-appliance", &["localhost"]);
        let client = pki.issue(
            &ca,
            "storescu",
            "storescu.site.example",
            &["storescu.site.example"],
        );
        let ct1 = pki.issue(&ca, "ct1", CT1_IDENTITY, &[CT1_IDENTITY]);
        let other = pki.issue(&ca, "other", "other.site.example", &["other.site.example"]);
        let attacker = pki.ca("attacker");
        let foreign = pki.issue(&attacker, "foreign", CT1_IDENTITY, &[CT1_IDENTITY]);
        Site {
            pki,
            ca,
            server,
            client,
            ct1,
            other,
            foreign,
        }
    }

    /// The appliance with `[dicom.tls]` on its own port (beside the plain one), mutual TLS
    /// with the site CA, and the peer CT1 bound to [`CT1_IDENTITY`].
    fn appliance(&self, tweak: &dyn Fn(&mut toml::Table)) -> (Appliance, u16) {
        let tls_port = free_port();
        let app = Appliance::start(&|c| {
            let dicom = c
                .get_mut("dicom")
                .and_then(|d| d.as_table_mut())
                .expect("[dicom]");
            let mut tls = toml::Table::new();
            tls.insert("port".into(), i64::from(tls_port).into());
            tls.insert("cert_file".into(), path(&self.server.cert).into());
            tls.insert("key_file".into(), path(&self.server.key).into());
            tls.insert("client_ca_file".into(), path(&self.ca.cert).into());
            dicom.insert("tls".into(), toml::Value::Table(tls));
            if let Some(toml::Value::Array(peers)) = dicom.get_mut("peers") {
                let mut ct1 = toml::Table::new();
                ct1.insert("ae_title".into(), "CT1".into());
                ct1.insert("host".into(), "127.0.0.1".into());
                ct1.insert("tls_identity".into(), CT1_IDENTITY.into());
                peers.push(toml::Value::Table(ct1));
            }
            tweak(c);
        });
        (app, tls_port)
    }
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// DCMTK's TLS options: our key and certificate, and the CA we trust for the server's.
fn tls_args<'a>(client: &'a Issued, ca: &'a Issued) -> Vec<String> {
    vec![
        "+tls".into(),
        path(&client.key),
        path(&client.cert),
        "+cf".into(),
        path(&ca.cert),
    ]
}

fn echoscu(calling_ae: &str, port: u16, tls: &[String]) -> Output {
    Command::new(ECHOSCU)
        .args(["-v", "-aet", calling_ae, "-aec", "RADIANT"])
        .args(tls)
        .args(["127.0.0.1", &port.to_string()])
        .output()
        .expect("run DCMTK echoscu")
}

fn storescu(calling_ae: &str, port: u16, tls: &[String], file: &Path) -> Output {
    Command::new(STORESCU)
        .args(["-v", "-aet", calling_ae, "-aec", "RADIANT"])
        .args(tls)
        .args(["127.0.0.1", &port.to_string()])
        .arg(file)
        .output()
        .expect("run DCMTK storescu")
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn first_slice() -> (PathBuf, String) {
    let series = CtSeries::load();
    (
        series.paths()[0].clone(),
        series.slices[0].sop_instance_uid.clone(),
    )
}

#[test]
fn a_client_with_a_certificate_from_the_site_ca_echoes_and_stores_over_tls() {
    let site = Site::new();
    let (app, tls_port) = site.appliance(&|_| {});
    let tls = tls_args(&site.client, &site.ca);
    let out = echoscu("ECHOSCU", tls_port, &tls);
    assert!(out.status.success(), "{}\n{}", text(&out), app.log());
    let (file, uid) = first_slice();
    let out = storescu("STORESCU", tls_port, &tls, &file);
    assert!(out.status.success(), "{}\n{}", text(&out), app.log());
    let stored = app
        .stored_path(&uid)
        .unwrap_or_else(|| panic!("not in the index\n{}", app.log()));
    assert!(stored.is_file());
    assert_eq!(app.expect_metric("radiant_instances_received_total"), 1.0);
    // The bound peer with its own certificate is admitted too.
    let out = echoscu("CT1", tls_port, &tls_args(&site.ct1, &site.ca));
    assert!(out.status.success(), "{}\n{}", text(&out), app.log());
}

#[test]
fn a_client_certificate_from_another_ca_is_refused_and_nothing_is_stored() {
    let site = Site::new();
    let (app, tls_port) = site.appliance(&|_| {});
    let (file, uid) = first_slice();
    // Same names as a good certificate; only the issuer differs.
    let out = storescu(
        "STORESCU",
        tls_port,
        &tls_args(&site.foreign, &site.ca),
        &file,
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(app.stored_path(&uid).is_none());
    assert!(
        wait_until(Duration::from_secs(5), || app
            .log()
            .contains("TLS handshake failed")),
        "{}",
        app.log()
    );
    assert!(app.log().contains("UnknownIssuer"), "{}", app.log());
    assert!(app.expect_metric("radiant_rejects_total{reason=\"tls_handshake\"}") >= 1.0);
    assert_eq!(app.expect_metric("radiant_associations_total"), 0.0);
    // Without any client certificate: refused as well (mutual TLS is required).
    let out = Command::new(ECHOSCU)
        .args(["-aet", "ECHOSCU", "-aec", "RADIANT", "+tla", "+cf"])
        .arg(&site.ca.cert)
        .args(["127.0.0.1", &tls_port.to_string()])
        .output()
        .expect("run echoscu");
    assert!(!out.status.success(), "{}", text(&out));
}

#[test]
fn plain_dicom_on_the_tls_port_is_refused() {
    let site = Site::new();
    let (app, tls_port) = site.appliance(&|_| {});
    let out = echoscu("ECHOSCU", tls_port, &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let (file, uid) = first_slice();
    let out = storescu("STORESCU", tls_port, &[], &file);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(app.stored_path(&uid).is_none());
    assert!(
        wait_until(Duration::from_secs(5), || app
            .log()
            .contains("TLS handshake failed")),
        "{}",
        app.log()
    );
    assert!(app.expect_metric("radiant_rejects_total{reason=\"tls_handshake\"}") >= 2.0);
    // The plain port beside it still serves peers that are not bound to an identity.
    let out = echoscu("ECHOSCU", app.port, &[]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn an_ae_title_bound_to_a_tls_identity_is_rejected_with_another_certificate_or_without_tls() {
    let site = Site::new();
    let (app, tls_port) = site.appliance(&|_| {});
    // A valid certificate of the site CA, but for another identity.
    let out = echoscu("CT1", tls_port, &tls_args(&site.other, &site.ca));
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(output.contains("Association Rejected"), "{output}");
    assert!(
        output.contains("Calling AE Title Not Recognized"),
        "{output}"
    );
    // Over the plain port: no certificate at all.
    let out = echoscu("CT1", app.port, &[]);
    let output = text(&out);
    assert!(!out.status.success(), "{output}");
    assert!(output.contains("Association Rejected"), "{output}");
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"tls_identity\"}"),
        2.0
    );
    let log = app.log();
    let refusals: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("association refused") && l.contains("tls_identity"))
        .collect();
    assert_eq!(refusals.len(), 2, "{log}");
    assert!(refusals[0].contains("other.site.example"), "{log}");
    // The right certificate is admitted.
    let out = echoscu("CT1", tls_port, &tls_args(&site.ct1, &site.ca));
    assert!(out.status.success(), "{}\n{}", text(&out), app.log());
}

#[test]
fn a_connection_that_never_handshakes_loses_its_slot_at_the_artim_deadline() {
    let site = Site::new();
    let (app, tls_port) = site.appliance(&|c| {
        let dicom = c.get_mut("dicom").and_then(|d| d.as_table_mut()).unwrap();
        dicom.insert("max_associations".into(), 1i64.into());
        // Long enough that the good client below is sure to arrive while the slot is held,
        // even on a loaded machine.
        dicom.insert("association_request_timeout_seconds".into(), 4i64.into());
    });
    // The harness's readiness probe (a connection to the plain port, closed at once) holds the
    // one slot for a moment; a connection arriving then would be refused over the limit
    // instead of taking the slot.
    std::thread::sleep(Duration::from_millis(500));
    let started = Instant::now();
    let mut silent =
        std::net::TcpStream::connect(("127.0.0.1", tls_port)).expect("connect to the TLS port");
    silent
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    // The one slot is taken: a good client meanwhile is turned away (after its handshake,
    // with a transient A-ASSOCIATE-RJ) ...
    std::thread::sleep(Duration::from_millis(300));
    let out = echoscu("ECHOSCU", tls_port, &tls_args(&site.client, &site.ca));
    assert!(
        started.elapsed() < Duration::from_millis(3500),
        "echoscu took until {:?}: too late to find the slot held",
        started.elapsed()
    );
    let output = text(&out);
    assert!(!out.status.success(), "{output}\n{}", app.log());
    assert!(output.contains("Local Limit Exceeded"), "{output}");
    // ... until the deadline closes the silent connection.
    let mut buf = [0u8; 16];
    // Our own read timeout (15 s) is not a close.
    let closed = match silent.read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    };
    let after = started.elapsed();
    assert!(closed, "the silent connection was not closed");
    assert!(
        after >= Duration::from_millis(3500) && after < Duration::from_secs(10),
        "closed after {after:?}"
    );
    assert!(
        wait_until(Duration::from_secs(5), || app
            .log()
            .contains("TLS handshake not finished")),
        "{}",
        app.log()
    );
    let out = echoscu("ECHOSCU", tls_port, &tls_args(&site.client, &site.ca));
    assert!(out.status.success(), "{}\n{}", text(&out), app.log());
}

/// Our SCU (what the outbox uses) against DCMTK `storescp +tls` requiring a client
/// certificate: delivered with the server's certificate checked against the site CA and
/// name; with the attacker's CA as trust anchor, a permanent TLS error and nothing sent.
#[test]
fn our_scu_delivers_to_a_storescp_that_requires_tls_and_a_client_certificate() {
    let site = Site::new();
    let storescp_cert = site
        .pki
        .issue(&site.ca, "storescp", "pacs.site.example", &["localhost"]);
    let storescp = start_storescp_with(&[
        "+tls",
        &path(&storescp_cert.key),
        &path(&storescp_cert.cert),
        "+cf",
        &path(&site.ca.cert),
        "--require-peer-cert",
    ]);
    let (file, uid) = first_slice();
    let mut config = ScuConfig::new("RADIANT");
    config.connect_timeout = Duration::from_secs(5);
    config.io_timeout = Duration::from_secs(30);
    let to = |tls: ClientTls| Destination {
        ae_title: "STORESCP".into(),
        host: "127.0.0.1".into(),
        port: storescp.port,
        tls: Some(tls),
    };
    let tls = ClientTls::load(
        &site.ca.cert,
        Some((&site.client.cert, &site.client.key)),
        "localhost",
    )
    .expect("client TLS settings");
    let outcomes = scu::send(&to(tls), &config, std::slice::from_ref(&file))
        .unwrap_or_else(|e| panic!("association with storescp over TLS: {e}"));
    assert_eq!(outcomes.len(), 1);
    assert!(
        matches!(outcomes[0].result, Ok(Delivered::Success)),
        "{:?}",
        outcomes[0].result
    );
    let received = files_below(&storescp.storage_dir());
    assert_eq!(received.len(), 1, "{received:?}");
    assert!(received[0].to_string_lossy().ends_with(&uid));

    // Trusting only the attacker's CA: storescp's certificate does not verify.
    let attacker_ca = site.pki.dir.path().join("attacker-ca.crt");
    let tls = ClientTls::load(
        &attacker_ca,
        Some((&site.client.cert, &site.client.key)),
        "localhost",
    )
    .expect("client TLS settings");
    let err = scu::send(&to(tls), &config, std::slice::from_ref(&file)).unwrap_err();
    assert!(matches!(err, ScuError::Tls { .. }), "{err}");
    assert!(!err.is_transient(), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    assert_eq!(files_below(&storescp.storage_dir()).len(), 1);
}
