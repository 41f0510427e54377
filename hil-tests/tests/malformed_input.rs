//! Bad input gets a failure status or an A-ABORT, never a Success, a crash or a hang, and other
//! associations carry on. Each case checks that nothing was stored and the daemon still serves.

use dicom_ul::pdu::Pdu;
use hil_tests::appliance::{set_dicom, Appliance};
use hil_tests::fixtures::CtSeries;
use hil_tests::peers::{echoscu, storescu, storescu_successes};
use hil_tests::raw::{ct_dataset, pixel_data_header, RawScu, CT_IMAGE_STORAGE};
use std::time::{Duration, Instant};

fn still_serving(app: &Appliance) {
    let out = echoscu("ECHOSCU", &app.ae_title, app.port);
    assert!(
        out.status.success(),
        "daemon stopped serving:\n{}",
        app.log()
    );
    assert_eq!(
        app.expect_metric("radiant_spool_instances"),
        0.0,
        "something was stored"
    );
}

#[test]
fn pixel_data_declaring_more_bytes_than_sent_gets_a_failure_status() {
    let app = Appliance::start(&|_| {});
    let mut scu = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    // A real CT slice whose Pixel Data header claims 1 GiB while 128 KiB follow.
    let series = CtSeries::load();
    let mut dataset = hil_tests::fixtures::dataset_of(&series.paths()[0]);
    let pixel_header = pixel_data_header(256 * 256 * 2);
    let at = dataset
        .windows(pixel_header.len())
        .rposition(|w| w == pixel_header.as_slice())
        .expect("the slice has OW pixel data of 128 KiB");
    dataset[at + 8..at + 12].copy_from_slice(&(1u32 << 30).to_le_bytes());
    scu.send_store(
        1,
        CT_IMAGE_STORAGE,
        &series.slices[0].sop_instance_uid,
        1,
        &dataset,
        16_000,
    );
    let rsp = scu
        .response()
        .expect("a C-STORE-RSP, not a dropped connection");
    assert_eq!(rsp.status, 0xC000, "{rsp:?}");
    let comment = rsp.error_comment.unwrap_or_default();
    assert!(comment.contains("declares 1073741824 bytes"), "{comment}");
    // The association stays usable after a refused instance.
    assert_eq!(scu.echo(3, 2).map(|r| r.status), Some(0));
    still_serving(&app);
    assert!(app.log().contains("malformed_dataset"));
}

#[test]
fn a_truncated_dataset_gets_a_failure_status() {
    let app = Appliance::start(&|_| {});
    let mut scu = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let dataset = ct_dataset("1.2.3.4.5", "1.2.3.4", 64);
    scu.send_store(
        1,
        CT_IMAGE_STORAGE,
        "1.2.3.4.5",
        1,
        &dataset[..dataset.len() - 70],
        1000,
    );
    assert_eq!(scu.response().map(|r| r.status), Some(0xC000));
    still_serving(&app);
}

#[test]
fn a_dataset_whose_sop_instance_uid_differs_from_the_command_gets_a900() {
    let app = Appliance::start(&|_| {});
    let mut scu = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let dataset = ct_dataset("1.2.3.4.5", "1.2.3.4", 64);
    scu.send_store(1, CT_IMAGE_STORAGE, "1.2.3.4.6", 1, &dataset, 1000);
    let rsp = scu.response().expect("response");
    assert_eq!(rsp.status, 0xA900, "{rsp:?}");
    still_serving(&app);
}

#[test]
fn a_uid_with_path_characters_is_refused_and_writes_nothing_outside_the_spool() {
    let app = Appliance::start(&|_| {});
    let mut scu = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let dataset = ct_dataset("1.2.3.4.5", "../../../tmp/evil", 64);
    scu.send_store(1, CT_IMAGE_STORAGE, "1.2.3.4.5", 1, &dataset, 1000);
    assert_eq!(scu.response().map(|r| r.status), Some(0xA900));
    still_serving(&app);
}

#[test]
fn an_instance_over_max_instance_bytes_gets_out_of_resources() {
    let app = Appliance::start(&|c| set_dicom(c, "max_instance_bytes", 65_536i64));
    let mut scu = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let dataset = ct_dataset("1.2.3.4.5", "1.2.3.4", 200_000);
    scu.send_store(1, CT_IMAGE_STORAGE, "1.2.3.4.5", 1, &dataset, 16_000);
    let rsp = scu.response().expect("response");
    assert_eq!(rsp.status, 0xA700, "{rsp:?}");
    assert!(rsp
        .error_comment
        .unwrap_or_default()
        .contains("max_instance_bytes"));
    still_serving(&app);
}

#[test]
fn a_pdu_over_the_limit_is_aborted_before_it_is_read() {
    let app = Appliance::start(&|c| set_dicom(c, "max_pdu_length", 16_384i64));
    let mut scu = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    // A P-DATA-TF header announcing 1 GiB: the SCP must abort without waiting for the body.
    let mut header = vec![0x04, 0x00];
    header.extend((1u32 << 30).to_be_bytes());
    scu.send_bytes(&header).unwrap();
    assert!(matches!(scu.receive(), Some(Pdu::AbortRQ { .. })));
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"pdu_too_large\"}"),
        1.0
    );
    still_serving(&app);
}

#[test]
fn garbage_instead_of_an_association_request_is_dropped() {
    let app = Appliance::start(&|_| {});
    let mut scu = RawScu::connect(app.port);
    scu.send_bytes(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let reply = scu.receive();
    assert!(
        matches!(reply, None | Some(Pdu::AbortRQ { .. })),
        "{reply:?}"
    );
    still_serving(&app);
}

#[test]
fn a_stalled_peer_is_aborted_after_the_idle_timeout_while_others_store() {
    let app = Appliance::start(&|c| set_dicom(c, "idle_timeout_seconds", 2i64));
    let mut stalled = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    // The start of a command PDV announcing 996 bytes, 50 of them sent, then silence.
    let mut header = vec![0x04, 0x00];
    header.extend(1000u32.to_be_bytes());
    header.extend(996u32.to_be_bytes());
    header.extend([1, 0x01]);
    header.extend([0u8; 50]);
    stalled.send_bytes(&header).unwrap();
    let started = Instant::now();
    let series = CtSeries::load();
    let out = storescu(
        "STORESCU",
        &app.ae_title,
        app.port,
        &[],
        &series.paths()[..5],
    );
    assert_eq!(
        storescu_successes(&String::from_utf8_lossy(&out.stderr)).len(),
        5
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the stalled peer blocked others"
    );
    let reply = stalled.receive();
    assert!(
        matches!(reply, None | Some(Pdu::AbortRQ { .. })),
        "{reply:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    assert_eq!(
        app.expect_metric("radiant_rejects_total{reason=\"timeout\"}"),
        1.0
    );
}

#[test]
fn a_silent_connection_is_dropped_after_the_association_request_timeout() {
    let app = Appliance::start(&|c| set_dicom(c, "association_request_timeout_seconds", 1i64));
    let mut silent = RawScu::connect(app.port);
    let started = Instant::now();
    let reply = silent.receive();
    assert!(
        matches!(reply, None | Some(Pdu::AbortRQ { .. })),
        "{reply:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    assert!(echoscu("ECHOSCU", &app.ae_title, app.port).status.success());
}
