//! The DIMSE command decoders (`pacs_bridge::dimse`): `decode` (requests, the SCP) and
//! `decode_response` (responses, the SCU) on any bytes.
//!
//! Properties: both return a value or a typed `CommandError`, never panic; and what they read
//! round-trips through our encoders: a decoded response encoded again with `Response::encode`
//! decodes to the same fields (the error comment as `encode` cuts it), and a decoded
//! C-STORE-RQ with both UIDs encoded with `StoreRequest::encode` decodes to the same message
//! ID and UIDs.

use pacs_bridge::dimse::{self, Response, StoreRequest};

fn main() {
    afl::fuzz!(|data: &[u8]| {
        check(data);
    });
}

fn check(data: &[u8]) {
    if let Ok(rsp) = dimse::decode_response(data) {
        let bytes = Response {
            command_field: rsp.command_field,
            message_id_being_responded_to: rsp.message_id_being_responded_to,
            affected_sop_class_uid: rsp.affected_sop_class_uid.as_deref(),
            affected_sop_instance_uid: rsp.affected_sop_instance_uid.as_deref(),
            status: rsp.status,
            error_comment: rsp.error_comment.as_deref(),
        }
        .encode();
        let back = dimse::decode_response(&bytes).expect("an encoded response decodes");
        assert_eq!(back.command_field, rsp.command_field);
        assert_eq!(
            back.message_id_being_responded_to,
            rsp.message_id_being_responded_to
        );
        assert_eq!(back.status, rsp.status);
        assert!(!back.has_dataset);
        assert_eq!(back.affected_sop_class_uid, rsp.affected_sop_class_uid);
        assert_eq!(
            back.affected_sop_instance_uid,
            rsp.affected_sop_instance_uid
        );
        let cut = rsp.error_comment.as_deref().map(cut_comment);
        assert_eq!(back.error_comment, cut);
    }
    if let Ok(cmd) = dimse::decode(data) {
        if cmd.command_field == dimse::C_STORE_RQ {
            if let (Some(class), Some(instance)) = (
                cmd.affected_sop_class_uid.as_deref(),
                cmd.affected_sop_instance_uid.as_deref(),
            ) {
                let bytes = StoreRequest {
                    message_id: cmd.message_id,
                    affected_sop_class_uid: class,
                    affected_sop_instance_uid: instance,
                }
                .encode();
                let back = dimse::decode(&bytes).expect("an encoded C-STORE-RQ decodes");
                assert_eq!(back.command_field, dimse::C_STORE_RQ);
                assert_eq!(back.message_id, cmd.message_id);
                assert!(back.has_dataset);
                assert_eq!(back.affected_sop_class_uid.as_deref(), Some(class));
                assert_eq!(back.affected_sop_instance_uid.as_deref(), Some(instance));
            }
        }
    }
}

/// What `Response::encode` keeps of a comment (printable ASCII but backslash, 64 characters),
/// as the decoder reads it back (trailing NUL and space padding removed, leading spaces too).
fn cut_comment(comment: &str) -> String {
    let cut: String = comment
        .chars()
        .filter(|c| c.is_ascii() && !c.is_ascii_control() && *c != '\\')
        .take(64)
        .collect();
    cut.trim_end_matches(['\0', ' ']).trim_start().to_string()
}
