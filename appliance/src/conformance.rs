//! The DICOM Conformance Statement (PS3.2), rendered from the code: the SOP classes and
//! transfer syntaxes the SCP accepts and the SCU proposes, what each refusal answers on the
//! wire, the TLS versions and suites, the implementation's identity, and the limits with their
//! defaults from the embedded configuration. `appliance conformance --output
//! docs/conformance.md` writes it; a test fails when the committed document and this
//! rendering disagree, so the document cannot drift from the code.

use crate::config::Config;
use crate::export::CREATED_SOP_CLASSES;
use pacs_bridge::scp::{Answer, RejectReason};
use pacs_bridge::{scu, tls, uids};
use std::fmt::Write;

/// Statuses a destination may answer, each shown with what the SCU does about it.
const STATUSES_SEEN: [u16; 14] = [
    0x0000, 0xB000, 0xB007, 0x0001, 0xA700, 0x0110, 0x0213, 0xFE00, 0xA900, 0xC000, 0x0122, 0x0124,
    0x0111, 0x0211,
];

/// The whole statement as Markdown. `config` gives the defaults it quotes (the embedded
/// default configuration, so the document does not depend on a site's file).
pub fn render(config: &Config) -> String {
    let mut first = String::new();
    overview(&mut first);
    let mut body = String::new();
    introduction(&mut body);
    networking(&mut body, config);
    rest(&mut body);
    let mut doc = String::new();
    header(&mut doc);
    doc.push_str(&first);
    contents(&mut doc, &format!("{first}{body}"));
    doc.push_str(&body);
    doc
}

/// Section 2: the section and subsection headings of `body`, indented by level.
fn contents(doc: &mut String, body: &str) {
    doc.push_str("## 2 Table of Contents\n\n");
    for line in body.lines() {
        let level = line.bytes().take_while(|&b| b == b'#').count();
        if (2..=3).contains(&level) && line.as_bytes().get(level) == Some(&b' ') {
            let indent = "  ".repeat(level - 2);
            let _ = writeln!(doc, "{indent}- {}", line[level + 1..].trim());
        }
    }
    doc.push('\n');
}

fn sop_name(uid: &str) -> &'static str {
    uids::sop_class_name(uid).unwrap_or("(unnamed SOP class)")
}

fn ts_name(uid: &str) -> &'static str {
    uids::transfer_syntax_name(uid).unwrap_or("(unnamed transfer syntax)")
}

fn header(doc: &mut String) {
    let _ = writeln!(
        doc,
        "# DICOM Conformance Statement: Radiant Edge appliance {}\n\n\
         Generated from the code by `appliance conformance --output docs/conformance.md`; a \
         test fails when this file and the code disagree. Structure after DICOM PS3.2 \
         (2024), annex A.\n",
        env!("CARGO_PKG_VERSION")
    );
}

fn overview(doc: &mut String) {
    doc.push_str(
        "## 1 Conformance Statement Overview\n\n\
         The appliance receives images from a PACS or modality (Storage SCP), analyses them \
         with its installed models, and sends the results back as new DICOM objects (Storage \
         SCU). It answers and sends C-ECHO (Verification). It has no media interchange, \
         query/retrieve, worklist or print services.\n\n\
         Table 1-1. Network services\n\n\
         | SOP Class | UID | User of service (SCU) | Provider of service (SCP) |\n\
         |---|---|---|---|\n",
    );
    for (uid, _) in uids::STORAGE_SOP_CLASSES {
        let scu = if CREATED_SOP_CLASSES.contains(uid) {
            "Yes"
        } else {
            "No"
        };
        let _ = writeln!(doc, "| {} | {uid} | {scu} | Yes |", sop_name(uid));
    }
    let _ = writeln!(
        doc,
        "| {} | {} | Yes | Yes |\n",
        sop_name(uids::VERIFICATION),
        uids::VERIFICATION
    );
}

fn introduction(doc: &mut String) {
    doc.push_str(
        "## 3 Introduction\n\n\
         ### 3.1 Audience\n\n\
         Radiology IT staff and integrators who connect the appliance to a PACS, and PACS \
         vendors checking interoperability.\n\n\
         ### 3.2 Remarks\n\n\
         Results are produced by machine-learning models; they support and never replace a \
         radiologist's reading. A configuration different from the defaults quoted here changes the limits in section \
         4.4, never the services or SOP classes.\n\n",
    );
}

fn networking(doc: &mut String, config: &Config) {
    let dicom = &config.dicom;
    let _ = write!(
        doc,
        "## 4 Networking\n\n\
         ### 4.1 Implementation Model\n\n\
         #### 4.1.1 Application Data Flow\n\n\
         One Application Entity (AE title `{ae}` by default) serves every activity:\n\n\
         1. *Receive images*: a configured peer opens an association and sends instances over \
         C-STORE. Each instance is written and synced to disk before its Success status goes \
         out. A series quiet for `dicom.study_quiet_seconds` ({quiet} s by default) is \
         complete and queued for analysis.\n\
         2. *Send results*: each result object is queued in a durable outbox and sent to the \
         destinations configured for the sender's AE title, up to {batch} objects per \
         association, retried with a doubling wait while the failure may pass.\n\
         3. *Verify*: C-ECHO is answered on every association; `appliance doctor` sends \
         C-ECHO to every destination.\n\n\
         #### 4.1.2 Functional Definition of the AE\n\n\
         The AE listens on the configured port (and the TLS port when configured), accepts \
         associations only from configured peers (`[[dicom.peers]]`: AE title, optionally \
         addresses and a TLS client certificate identity), and initiates associations to the \
         configured destinations (`[[destinations]]`).\n\n\
         #### 4.1.3 Sequencing of Real-World Activities\n\n\
         Results are sent only after the study they describe was received and analysed; a \
         SEG is sent before the SR that references it.\n\n\
         ### 4.2 AE Specifications\n\n\
         #### 4.2.1 SOP Classes\n\n\
         As in table 1-1.\n\n\
         #### 4.2.2 Association Policies\n\n\
         - Application Context Name: `{context}`.\n\
         - Maximum PDU length received: `dicom.max_pdu_length`, {pdu} bytes by default; the \
         same bound applies to the PDUs the SCU sends.\n\
         - Associations accepted at once: `dicom.max_associations`, {assoc} by default; \
         connections from addresses of no configured peer, waiting for admission: \
         `dicom.max_unauthenticated`, {unauth} by default.\n\
         - Associations initiated: one per destination at a time.\n\
         - Asynchronous operations window: not negotiated; one operation outstanding at a \
         time in each direction.\n\
         - SCP/SCU role selection and extended negotiation: not supported (ignored when \
         proposed); the AE is SCP for what it accepts and SCU for what it proposes.\n\
         - Implementation Class UID: `{class_uid}`; Implementation Version Name: `{version}`.\n\n",
        ae = dicom.ae_title,
        quiet = dicom.study_quiet_seconds,
        batch = crate::outbox::BATCH,
        context = uids::APPLICATION_CONTEXT,
        pdu = dicom.max_pdu_length,
        assoc = dicom.max_associations,
        unauth = dicom.max_unauthenticated,
        class_uid = uids::IMPLEMENTATION_CLASS_UID,
        version = uids::IMPLEMENTATION_VERSION_NAME,
    );
    initiation(doc);
    acceptance(doc);
    interfaces(doc);
    configuration(doc, config);
}

fn initiation(doc: &mut String) {
    doc.push_str(
        "#### 4.2.3 Association Initiation Policy\n\n\
         ##### Activity: send results\n\n\
         Proposed presentation contexts (one per SOP class and encoding of the files in the \
         association; a file keeps its own transfer syntax first, then the native fallbacks \
         below; an encapsulated file is offered in its own syntax only):\n\n\
         | Abstract Syntax | UID | Transfer Syntaxes | Role | Extended Negotiation |\n\
         |---|---|---|---|---|\n",
    );
    let fallbacks: Vec<String> = scu::FALLBACK_SYNTAXES
        .iter()
        .map(|ts| format!("{} `{ts}`", ts_name(ts)))
        .collect();
    for uid in CREATED_SOP_CLASSES {
        let _ = writeln!(
            doc,
            "| {} | {uid} | {} | SCU | None |",
            sop_name(uid),
            fallbacks.join("; ")
        );
    }
    let _ = writeln!(
        doc,
        "\nAt most {} presentation contexts per association. The created objects are written \
         in {} and sent unchanged when the destination accepts it.\n\n\
         How the SCU treats each C-STORE response status:\n\n\
         | Status | Meaning | Behaviour |\n\
         |---|---|---|",
        scu::MAX_CONTEXTS,
        ts_name(uids::EXPLICIT_VR_LE)
    );
    for status in STATUSES_SEEN {
        let behaviour = match scu::classify(status) {
            scu::StatusClass::Success => "delivered",
            scu::StatusClass::Warning => "delivered; the warning is logged",
            scu::StatusClass::Transient => "retried later, with a doubling wait",
            scu::StatusClass::Permanent => "failed at once, with the reason; not retried",
        };
        let _ = writeln!(
            doc,
            "| {status:04X} | {} | {behaviour} |",
            scu::meaning(status)
        );
    }
    let _ = writeln!(
        doc,
        "\nAn A-ASSOCIATE-RJ marked transient, a refused connection and a timeout are retried \
         like a transient status; a permanent rejection fails the objects at once.\n\n\
         ##### Activity: verify a destination\n\n\
         | Abstract Syntax | UID | Transfer Syntax | Role | Extended Negotiation |\n\
         |---|---|---|---|---|\n\
         | {} | {} | {} `{}` | SCU | None |\n",
        sop_name(uids::VERIFICATION),
        uids::VERIFICATION,
        ts_name(scu::ECHO_SYNTAX),
        scu::ECHO_SYNTAX
    );
}

fn acceptance(doc: &mut String) {
    doc.push_str(
        "#### 4.2.4 Association Acceptance Policy\n\n\
         ##### Activity: receive images\n\n\
         Every storage SOP class of table 1-1 and Verification, each in any of these transfer \
         syntaxes; the first one in the proposer's order that is listed here is accepted, so \
         the sender never needs to transcode. A context with another abstract syntax or only \
         other transfer syntaxes is rejected on its own (PS3.8 9.3.3.2), never the whole \
         association. Role: SCP. Extended negotiation: none.\n\n\
         | Transfer Syntax | UID |\n\
         |---|---|\n",
    );
    for ts in uids::TRANSFER_SYNTAXES {
        let _ = writeln!(doc, "| {} | {ts} |", ts_name(ts));
    }
    doc.push_str(
        "\nStorage SCP conformance: level 2 (full). Every element is stored as received, the \
         dataset's bytes unchanged, in its transfer syntax; nothing is coerced. An instance \
         sent again (same SOP Instance UID) is answered with Success and stored once. The \
         stored instances are kept until retention removes them (age and disk watermarks).\n\n\
         C-STORE response statuses the SCP sends:\n\n\
         | Status | When | Counted as (`rejects_total` reason) |\n\
         |---|---|---|\n\
         | 0000 | the instance is on disk and synced | (stored) |\n",
    );
    let mut refusals = String::new();
    for reason in RejectReason::ALL {
        match reason.answer() {
            Answer::Status(code) => {
                let _ = writeln!(
                    doc,
                    "| {code:04X} | {} | `{}` |",
                    reason.condition(),
                    reason.label()
                );
            }
            answer => {
                let _ = writeln!(
                    refusals,
                    "| {} | {} | `{}` |",
                    reason.condition(),
                    answer.describe(),
                    reason.label()
                );
            }
        }
    }
    let _ = write!(
        doc,
        "\nA full disk found during an association refuses each further instance with {:04X} \
         (`{}`).\n\n\
         Associations and connections refused or ended by the SCP:\n\n\
         | When | Answer | Counted as |\n\
         |---|---|---|\n{refusals}\n\
         C-ECHO is answered with 0000 on every accepted association.\n\n",
        RejectReason::DiskFloor.store_status(),
        RejectReason::DiskFloor.label()
    );
}

fn interfaces(doc: &mut String) {
    let _ = write!(
        doc,
        "### 4.3 Network Interfaces\n\n\
         TCP/IP (IPv4 and IPv6) on the configured bind address. DICOM over TLS (PS3.15 annex \
         B, the non-downgrading BCP 195 profile) on `dicom.tls.port` when configured: the TLS \
         port speaks TLS only. Protocol versions: {}. Cipher suites, in preference order: {}. \
         With `dicom.tls.client_ca_file` a client certificate is required and verified (mutual \
         TLS); destinations are reached over TLS with `tls = true`, verifying the server's \
         certificate against `ca_file` and its name.\n\n",
        tls::protocol_versions().join(", "),
        tls::cipher_suites()
            .iter()
            .map(|s| format!("`{s}`"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}

fn configuration(doc: &mut String, config: &Config) {
    let d = &config.dicom;
    let o = &config.outbox;
    let rows: [(&str, String); 15] = [
        ("dicom.ae_title", d.ae_title.clone()),
        ("dicom.bind", d.bind.clone()),
        ("dicom.port", d.port.to_string()),
        ("dicom.max_associations", d.max_associations.to_string()),
        (
            "dicom.max_unauthenticated",
            d.max_unauthenticated.to_string(),
        ),
        (
            "dicom.max_pdu_length",
            format!("{} bytes", d.max_pdu_length),
        ),
        (
            "dicom.max_instance_bytes",
            format!("{} bytes", d.max_instance_bytes),
        ),
        (
            "dicom.max_inflight_bytes",
            format!("{} bytes", d.max_inflight_bytes),
        ),
        (
            "dicom.association_request_timeout_seconds",
            format!("{} s (ARTIM)", d.association_request_timeout_seconds),
        ),
        (
            "dicom.idle_timeout_seconds",
            format!("{} s", d.idle_timeout_seconds),
        ),
        (
            "dicom.message_timeout_seconds",
            format!("{} s", d.message_timeout_seconds),
        ),
        (
            "storage.min_free_mb",
            format!("{} MiB", config.storage.min_free_mb),
        ),
        (
            "outbox.retry_initial_seconds / retry_max_seconds",
            format!("{} s / {} s", o.retry_initial_seconds, o.retry_max_seconds),
        ),
        (
            "outbox.give_up_after_hours",
            format!("{} h", o.give_up_after_hours),
        ),
        (
            "outbox.connect_timeout_seconds / io_timeout_seconds",
            format!(
                "{} s / {} s",
                o.connect_timeout_seconds, o.io_timeout_seconds
            ),
        ),
    ];
    doc.push_str(
        "### 4.4 Configuration\n\n\
         In `/etc/radiant-edge/appliance.toml`; defaults of the shipped configuration:\n\n\
         | Key | Default |\n\
         |---|---|\n",
    );
    for (key, value) in rows {
        let _ = writeln!(doc, "| `{key}` | {value} |");
    }
    doc.push('\n');
}

fn rest(doc: &mut String) {
    doc.push_str(
        "## 5 Media Interchange\n\n\
         Not supported.\n\n\
         ## 6 Support of Character Sets\n\n\
         Received instances are stored unchanged, whatever their Specific Character Set. \
         Created objects copy Specific Character Set (0008,0005) from their source together \
         with the patient and study attributes, and add text only in the default repertoire.\n\n\
         ## 7 Security\n\n\
         - Access control: only configured calling AE titles are accepted, optionally bound \
         to addresses and to a TLS client certificate identity (subject CN or SAN DNS name).\n\
         - Transport: DICOM TLS as in section 4.3.\n\
         - Logs never carry patient names, IDs or UIDs in clear.\n\n\
         ## 8 Annexes\n\n\
         ### 8.1 Created objects\n\n\
         | Object | SOP Class | UID |\n\
         |---|---|---|\n",
    );
    for uid in CREATED_SOP_CLASSES {
        let _ = writeln!(
            doc,
            "| {} | {} | {uid} |",
            crate::export::created_object_role(uid),
            sop_name(uid)
        );
    }
    doc.push_str(
        "\nEach created object copies the Patient and General Study modules of its source, \
         references the source series, and carries UIDs derived from the analysis it reports, \
         so a repeated analysis yields the same UIDs (a PACS sees a repeat, not a second \
         result).\n",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_and_class_appears() {
        let config = Config::embedded_default().expect("embedded default");
        let doc = render(&config);
        for reason in RejectReason::ALL {
            assert!(doc.contains(reason.label()), "{}", reason.label());
        }
        for (uid, _) in uids::STORAGE_SOP_CLASSES {
            assert!(doc.contains(uid), "{uid}");
        }
        assert!(doc.contains("TLS13_AES_256_GCM_SHA384"), "{doc}");
    }
}
