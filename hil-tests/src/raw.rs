//! A deliberately minimal DICOM SCU over a plain socket, for inputs that well-behaved peers
//! never send: truncated or lying datasets, oversized PDUs, stalls mid-PDU. PDUs are encoded
//! and decoded with `dicom-ul`; command sets are built by hand (implicit VR little endian).

use dicom_ul::pdu::{
    self, AssociationRQ, PDataValue, PDataValueType, Pdu, PresentationContextProposed,
    UserVariableItem,
};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub const CT_IMAGE_STORAGE: &str = "1.2.840.10008.5.1.4.1.1.2";
pub const VERIFICATION: &str = "1.2.840.10008.1.1";
pub const EXPLICIT_VR_LE: &str = "1.2.840.10008.1.2.1";
pub const IMPLICIT_VR_LE: &str = "1.2.840.10008.1.2";

pub struct RawScu {
    pub stream: TcpStream,
    buffer: Vec<u8>,
}

/// What a DIMSE response said.
#[derive(Debug, Clone)]
pub struct DimseResponse {
    pub command_field: u16,
    pub status: u16,
    pub error_comment: Option<String>,
}

impl RawScu {
    pub fn connect(port: u16) -> RawScu {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to the SCP");
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        RawScu {
            stream,
            buffer: Vec::new(),
        }
    }

    pub fn send(&mut self, pdu: &Pdu) {
        let mut bytes = Vec::new();
        pdu::write_pdu(&mut bytes, pdu).expect("encode PDU");
        self.stream.write_all(&bytes).expect("send PDU");
    }

    pub fn send_bytes(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Next PDU from the SCP; `None` when the connection closed first.
    pub fn receive(&mut self) -> Option<Pdu> {
        loop {
            if let Ok(Some(pdu)) = pdu::read_pdu(&self.buffer[..], pdu::MAXIMUM_PDU_SIZE, false) {
                let length = 6 + u32::from_be_bytes(self.buffer[2..6].try_into().ok()?) as usize;
                self.buffer.drain(..length);
                return Some(pdu);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buffer.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Request an association proposing `contexts` as (id, abstract syntax, transfer syntaxes).
    pub fn associate(
        &mut self,
        calling: &str,
        called: &str,
        contexts: &[(u8, &str, &[&str])],
    ) -> Option<Pdu> {
        self.send(&Pdu::AssociationRQ(AssociationRQ {
            protocol_version: 1,
            calling_ae_title: calling.into(),
            called_ae_title: called.into(),
            application_context_name: "1.2.840.10008.3.1.1.1".into(),
            presentation_contexts: contexts
                .iter()
                .map(|(id, abs, ts)| PresentationContextProposed {
                    id: *id,
                    abstract_syntax: (*abs).into(),
                    transfer_syntaxes: ts.iter().map(|t| (*t).to_string()).collect(),
                })
                .collect(),
            user_variables: vec![UserVariableItem::MaxLength(65536)],
        }));
        self.receive()
    }

    /// Associate with one CT storage context (id 1, explicit VR LE) and one verification (id 3);
    /// panics unless accepted.
    pub fn associate_for_ct(port: u16, calling: &str, called: &str) -> RawScu {
        let mut scu = RawScu::connect(port);
        match scu.associate(
            calling,
            called,
            &[
                (1, CT_IMAGE_STORAGE, &[EXPLICIT_VR_LE]),
                (3, VERIFICATION, &[IMPLICIT_VR_LE]),
            ],
        ) {
            Some(Pdu::AssociationAC(_)) => scu,
            other => panic!("association not accepted: {other:?}"),
        }
    }

    /// Send a C-STORE-RQ command and `dataset` in fragments of at most `fragment` bytes.
    pub fn send_store(
        &mut self,
        context_id: u8,
        sop_class: &str,
        sop_instance: &str,
        message_id: u16,
        dataset: &[u8],
        fragment: usize,
    ) {
        let command = store_command(sop_class, sop_instance, message_id);
        self.send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: command,
            }],
        });
        let chunks: Vec<&[u8]> = dataset.chunks(fragment.max(1)).collect();
        for (i, chunk) in chunks.iter().enumerate() {
            self.send(&Pdu::PData {
                data: vec![PDataValue {
                    presentation_context_id: context_id,
                    value_type: PDataValueType::Data,
                    is_last: i + 1 == chunks.len(),
                    data: chunk.to_vec(),
                }],
            });
        }
    }

    /// Read PDUs until a DIMSE response command arrives.
    pub fn response(&mut self) -> Option<DimseResponse> {
        match self.receive()? {
            Pdu::PData { data } => {
                let pdv = data
                    .into_iter()
                    .find(|v| v.value_type == PDataValueType::Command)?;
                Some(decode_response(&pdv.data))
            }
            _ => None,
        }
    }

    pub fn echo(&mut self, context_id: u8, message_id: u16) -> Option<DimseResponse> {
        let mut cmd = Vec::new();
        put(&mut cmd, 0x0002, VERIFICATION.as_bytes(), 0);
        put(&mut cmd, 0x0100, &0x0030u16.to_le_bytes(), 0);
        put(&mut cmd, 0x0110, &message_id.to_le_bytes(), 0);
        put(&mut cmd, 0x0800, &0x0101u16.to_le_bytes(), 0);
        self.send(&Pdu::PData {
            data: vec![PDataValue {
                presentation_context_id: context_id,
                value_type: PDataValueType::Command,
                is_last: true,
                data: cmd,
            }],
        });
        self.response()
    }

    pub fn release(&mut self) -> Option<Pdu> {
        self.send(&Pdu::ReleaseRQ);
        self.receive()
    }
}

fn put(out: &mut Vec<u8>, element: u16, value: &[u8], pad: u8) {
    let odd = value.len() % 2;
    out.extend(0u16.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(((value.len() + odd) as u32).to_le_bytes());
    out.extend(value);
    if odd == 1 {
        out.push(pad);
    }
}

/// A C-STORE-RQ command set (PS3.7 section 9.3.1.1).
pub fn store_command(sop_class: &str, sop_instance: &str, message_id: u16) -> Vec<u8> {
    let mut cmd = Vec::new();
    put(&mut cmd, 0x0002, sop_class.as_bytes(), 0);
    put(&mut cmd, 0x0100, &0x0001u16.to_le_bytes(), 0);
    put(&mut cmd, 0x0110, &message_id.to_le_bytes(), 0);
    put(&mut cmd, 0x0700, &0u16.to_le_bytes(), 0);
    put(&mut cmd, 0x0800, &0u16.to_le_bytes(), 0);
    put(&mut cmd, 0x1000, sop_instance.as_bytes(), 0);
    cmd
}

fn decode_response(bytes: &[u8]) -> DimseResponse {
    let mut out = DimseResponse {
        command_field: 0,
        status: 0xFFFF,
        error_comment: None,
    };
    let mut pos = 0;
    while pos + 8 <= bytes.len() {
        let element = u16::from_le_bytes([bytes[pos + 2], bytes[pos + 3]]);
        let len = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap_or([0; 4])) as usize;
        let value = &bytes[pos + 8..(pos + 8 + len).min(bytes.len())];
        match element {
            0x0100 if value.len() == 2 => {
                out.command_field = u16::from_le_bytes([value[0], value[1]])
            }
            0x0900 if value.len() == 2 => out.status = u16::from_le_bytes([value[0], value[1]]),
            0x0902 => out.error_comment = Some(String::from_utf8_lossy(value).trim().to_string()),
            _ => {}
        }
        pos += 8 + len;
    }
    out
}

/// Explicit VR little endian element with a 16-bit length, for building test datasets.
pub fn element(group: u16, element: u16, vr: &[u8; 2], value: &[u8]) -> Vec<u8> {
    let odd = value.len() % 2;
    let mut out = Vec::new();
    out.extend(group.to_le_bytes());
    out.extend(element.to_le_bytes());
    out.extend(vr);
    out.extend(((value.len() + odd) as u16).to_le_bytes());
    out.extend(value);
    if odd == 1 {
        out.push(if vr == b"UI" { 0 } else { b' ' });
    }
    out
}

/// A small, well-formed CT dataset (explicit VR LE) with the identifying attributes and
/// `pixel_bytes` of pixel data.
pub fn ct_dataset(sop_instance: &str, study: &str, pixel_bytes: usize) -> Vec<u8> {
    let mut ds = Vec::new();
    ds.extend(element(0x0008, 0x0016, b"UI", CT_IMAGE_STORAGE.as_bytes()));
    ds.extend(element(0x0008, 0x0018, b"UI", sop_instance.as_bytes()));
    ds.extend(element(0x0008, 0x0060, b"CS", b"CT"));
    ds.extend(element(0x0010, 0x0010, b"PN", b"Test^Patient"));
    ds.extend(element(0x0020, 0x000D, b"UI", study.as_bytes()));
    ds.extend(element(
        0x0020,
        0x000E,
        b"UI",
        format!("{study}.1").as_bytes(),
    ));
    ds.extend(pixel_data_header(pixel_bytes as u32));
    ds.extend(vec![0u8; pixel_bytes]);
    ds
}

/// (7FE0,0010) OW header declaring `length` bytes.
pub fn pixel_data_header(length: u32) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend(0x7FE0u16.to_le_bytes());
    out.extend(0x0010u16.to_le_bytes());
    out.extend(b"OW");
    out.extend([0, 0]);
    out.extend(length.to_le_bytes());
    out
}
