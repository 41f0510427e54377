//! What a connection may hold, and for how long: callers from addresses of no configured peer
//! fill only a small pool of their own, a request trickled a byte at a time loses its slot at
//! the ARTIM deadline, and datasets in flight share one memory budget (A700 beyond it), the
//! inflated copy of a deflated dataset included.

use dicom_ul::pdu::Pdu;
use hil_tests::appliance::{set, set_dicom, Appliance};
use hil_tests::peers::echoscu;
use hil_tests::raw::{self, RawScu};
use hil_tests::wait_until;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A TCP connection to the appliance from 127.0.0.2, an address no peer is bound to (std
/// cannot choose the source address of a connection, so the socket is made with libc).
fn connect_from_elsewhere(port: u16) -> TcpStream {
    use std::os::fd::FromRawFd;
    let address = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let length = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket calls on a descriptor this function owns, with sockaddr_in values
    // of the length given; the descriptor is handed to TcpStream only once connected.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let local = address([127, 0, 0, 2], 0);
        let bound = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), length);
        assert_eq!(
            bound,
            0,
            "bind 127.0.0.2: {}",
            std::io::Error::last_os_error()
        );
        let remote = address([127, 0, 0, 1], port);
        let connected = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), length);
        assert_eq!(connected, 0, "connect: {}", std::io::Error::last_os_error());
        TcpStream::from_raw_fd(fd)
    }
}

#[test]
fn connections_from_unknown_addresses_fill_their_own_pool_and_never_lock_out_a_configured_peer() {
    let app = Appliance::start(&|c| {
        set_dicom(c, "max_associations", 2);
        set_dicom(c, "max_unauthenticated", 2);
        set_dicom(c, "association_request_timeout_seconds", 30);
    });
    // Six silent connections from elsewhere: two wait for admission, four are closed at once.
    let silent: Vec<TcpStream> = (0..6).map(|_| connect_from_elsewhere(app.port)).collect();
    assert!(
        wait_until(Duration::from_secs(10), || {
            app.metric("radiant_rejects_total{reason=\"unauthenticated_limit\"}")
                .unwrap_or(0.0)
                >= 4.0
        }),
        "{}",
        app.log()
    );
    // The configured peers still associate, both slots of the main pool at once.
    let started = Instant::now();
    let mut first = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let out = echoscu("ECHOSCU", &app.ae_title, app.port);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        app.log()
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(first.echo(3, 1).map(|r| r.status), Some(0));
    drop(silent);
}

#[test]
fn a_request_trickled_a_byte_at_a_time_loses_its_slot_at_the_artim_deadline() {
    let app = Appliance::start(&|c| {
        set_dicom(c, "association_request_timeout_seconds", 2);
    });
    let mut scu = RawScu::connect(app.port);
    let mut request = Vec::new();
    dicom_ul::pdu::write_pdu(
        &mut request,
        &Pdu::AssociationRQ(dicom_ul::pdu::AssociationRQ {
            protocol_version: 1,
            calling_ae_title: "STORESCU".into(),
            called_ae_title: app.ae_title.clone(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: vec![],
            user_variables: vec![],
        }),
    )
    .unwrap();
    // One byte every 500 ms: each read finishes well inside 2 s, the request never does.
    let started = Instant::now();
    let mut closed = false;
    for byte in &request {
        if scu.stream.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(500));
        scu.stream.set_nonblocking(true).unwrap();
        let mut probe = [0u8; 64];
        let ended = matches!(scu.stream.read(&mut probe), Ok(0));
        scu.stream.set_nonblocking(false).unwrap();
        if ended {
            closed = true;
            break;
        }
        if started.elapsed() > Duration::from_secs(20) {
            break;
        }
    }
    let elapsed = started.elapsed();
    assert!(closed, "still open after {elapsed:?}\n{}", app.log());
    assert!(
        elapsed < Duration::from_secs(6),
        "closed only after {elapsed:?}"
    );
}

#[test]
fn datasets_beyond_the_memory_budget_wait_then_get_a700_and_the_budget_is_in_metrics() {
    let app = Appliance::start(&|c| {
        set_dicom(c, "max_instance_bytes", 1_000_000);
        set_dicom(c, "max_inflight_bytes", 1_000_000);
        set(c, "inference", "enabled", false);
    });
    assert_eq!(
        app.metric("radiant_scp_inflight_budget_bytes"),
        Some(1_000_000.0)
    );
    // The first association sends 900 KB of a dataset and stalls before its last fragment.
    let mut holder = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let big = raw::ct_dataset("1.2.826.0.1.9.1", "1.2.826.0.1.9", 950_000);
    let (head, tail) = big.split_at(900_000);
    holder.send(&Pdu::PData {
        data: vec![dicom_ul::pdu::PDataValue {
            presentation_context_id: 1,
            value_type: dicom_ul::pdu::PDataValueType::Command,
            is_last: true,
            data: raw::store_command(raw::CT_IMAGE_STORAGE, "1.2.826.0.1.9.1", 1),
        }],
    });
    for chunk in head.chunks(60_000) {
        holder.send(&Pdu::PData {
            data: vec![dicom_ul::pdu::PDataValue {
                presentation_context_id: 1,
                value_type: dicom_ul::pdu::PDataValueType::Data,
                is_last: false,
                data: chunk.to_vec(),
            }],
        });
    }
    assert!(
        wait_until(Duration::from_secs(10), || app
            .metric("radiant_scp_inflight_dataset_bytes")
            .is_some_and(|b| b >= 899_000.0)),
        "{}",
        app.log()
    );
    // A second instance does not fit beside it: after waiting, A700 with the reason.
    let mut second = RawScu::associate_for_ct(app.port, "STORESCU", &app.ae_title);
    let small = raw::ct_dataset("1.2.826.0.1.9.2", "1.2.826.0.1.9", 200_000);
    second.send_store(
        1,
        raw::CT_IMAGE_STORAGE,
        "1.2.826.0.1.9.2",
        1,
        &small,
        60_000,
    );
    let response = second.response().expect("a C-STORE response");
    assert_eq!(response.status, 0xA700, "{response:?}");
    assert!(
        response
            .error_comment
            .as_deref()
            .is_some_and(|c| c.contains("memory budget")),
        "{response:?}"
    );
    // The first one finishes and is stored; its memory goes back.
    holder.send(&Pdu::PData {
        data: vec![dicom_ul::pdu::PDataValue {
            presentation_context_id: 1,
            value_type: dicom_ul::pdu::PDataValueType::Data,
            is_last: true,
            data: tail.to_vec(),
        }],
    });
    assert_eq!(holder.response().map(|r| r.status), Some(0));
    assert_eq!(app.metric("radiant_scp_inflight_dataset_bytes"), Some(0.0));
    // With the memory back, the second instance goes through.
    second.send_store(
        1,
        raw::CT_IMAGE_STORAGE,
        "1.2.826.0.1.9.2",
        2,
        &small,
        60_000,
    );
    assert_eq!(second.response().map(|r| r.status), Some(0));
}

/// A deflated dataset of 2 KB inflates to about 950 KB: the inflated copy is charged to the
/// budget as it grows, so beside its own compressed bytes it does not fit a budget of 1 MB
/// (A700 naming the inflation, after the wait), while one that inflates to 300 KB is stored.
#[test]
fn the_inflated_copy_of_a_deflated_dataset_is_charged_to_the_memory_budget() {
    use std::io::Write as _;
    let app = Appliance::start(&|c| {
        set_dicom(c, "max_instance_bytes", 1_000_000);
        set_dicom(c, "max_inflight_bytes", 1_000_000);
        set(c, "inference", "enabled", false);
    });
    let deflate = |dataset: &[u8]| {
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(dataset).expect("deflate into memory");
        encoder.finish().expect("deflate into memory")
    };
    let mut scu = RawScu::connect(app.port);
    match scu.associate(
        "STORESCU",
        &app.ae_title,
        &[(1, raw::CT_IMAGE_STORAGE, &["1.2.840.10008.1.2.1.99"])],
    ) {
        Some(Pdu::AssociationAC(_)) => {}
        other => panic!("association not accepted: {other:?}"),
    }
    let large = deflate(&raw::ct_dataset(
        "1.2.826.0.1.9.11",
        "1.2.826.0.1.9",
        950_000,
    ));
    assert!(large.len() < 10_000, "{} bytes deflated", large.len());
    scu.send_store(
        1,
        raw::CT_IMAGE_STORAGE,
        "1.2.826.0.1.9.11",
        1,
        &large,
        60_000,
    );
    let response = scu.response().expect("a C-STORE response");
    assert_eq!(response.status, 0xA700, "{response:?}");
    assert!(
        response
            .error_comment
            .as_deref()
            .is_some_and(|c| c.contains("inflating") && c.contains("memory budget")),
        "{response:?}"
    );
    assert_eq!(app.metric("radiant_scp_inflight_dataset_bytes"), Some(0.0));
    let small = deflate(&raw::ct_dataset(
        "1.2.826.0.1.9.12",
        "1.2.826.0.1.9",
        300_000,
    ));
    scu.send_store(
        1,
        raw::CT_IMAGE_STORAGE,
        "1.2.826.0.1.9.12",
        2,
        &small,
        60_000,
    );
    assert_eq!(scu.response().map(|r| r.status), Some(0));
    assert_eq!(app.metric("radiant_scp_inflight_dataset_bytes"), Some(0.0));
}
