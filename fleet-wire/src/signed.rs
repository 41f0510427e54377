//! The global head header, signed by the federation server with ed25519 over its canonical
//! JSON (the header's fields in declaration order, no signature, no whitespace), and the
//! checks a device makes before it takes one: signature by its trusted key, its own
//! federation and model, a version above the one it has.

use crate::bounds::{check_blob_shape, check_id, check_sha256, MessageError};
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey};
use ed25519_dalek::{Signature, Signer, Verifier};
pub use ed25519_dalek::{SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SignatureError {
    #[error("the signature is not 64 bytes of hex")]
    Malformed,
    #[error("the signature does not verify with the trusted key")]
    Invalid,
    #[error("signed for federation {got}, not {expected}")]
    Federation { expected: String, got: String },
    #[error("signed for model {got}, not {expected}")]
    Model { expected: String, got: String },
    #[error("version {got} is not above the installed version {installed}")]
    NotNewer { installed: u64, got: u64 },
    #[error("key: {0}")]
    Key(String),
}

/// What a global head is: the blob of its tensors and where it comes from.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GlobalHead {
    pub federation: String,
    pub model: String,
    /// Strictly increasing per model.
    pub version: u64,
    pub base_version: u64,
    pub round: u64,
    /// SHA-256 of the safetensors blob of the head's tensors.
    pub blob: String,
    pub size: u64,
    pub count: u32,
    pub aggregator: String,
    pub participants: u32,
}

impl GlobalHead {
    pub fn validate(&self) -> Result<(), MessageError> {
        check_id(&self.federation)?;
        check_id(&self.model)?;
        check_sha256("blob", &self.blob)?;
        check_blob_shape(self.size, self.count)
    }

    fn canonical(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    pub fn sign(self, key: &SigningKey) -> SignedGlobalHead {
        let signature = hex::encode(key.sign(&self.canonical()).to_bytes());
        SignedGlobalHead {
            head: self,
            signature,
        }
    }
}

/// A global head header with the server's signature (hex).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SignedGlobalHead {
    #[serde(flatten)]
    pub head: GlobalHead,
    pub signature: String,
}

impl SignedGlobalHead {
    /// The head, if `key` signed it, it is for `federation` and `model`, and its version is
    /// above `installed`.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        federation: &str,
        model: &str,
        installed: u64,
    ) -> Result<&GlobalHead, SignatureError> {
        let bytes: [u8; 64] = hex::decode(&self.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or(SignatureError::Malformed)?;
        key.verify(&self.head.canonical(), &Signature::from_bytes(&bytes))
            .map_err(|_| SignatureError::Invalid)?;
        if self.head.federation != federation {
            return Err(SignatureError::Federation {
                expected: federation.into(),
                got: self.head.federation.clone(),
            });
        }
        if self.head.model != model {
            return Err(SignatureError::Model {
                expected: model.into(),
                got: self.head.model.clone(),
            });
        }
        if self.head.version <= installed {
            return Err(SignatureError::NotNewer {
                installed,
                got: self.head.version,
            });
        }
        Ok(&self.head)
    }
}

/// An ed25519 private key from PKCS#8 PEM.
pub fn signing_key_from_pem(pem: &str) -> Result<SigningKey, SignatureError> {
    SigningKey::from_pkcs8_pem(pem).map_err(|e| SignatureError::Key(e.to_string()))
}

/// An ed25519 public key from SubjectPublicKeyInfo PEM.
pub fn verifying_key_from_pem(pem: &str) -> Result<VerifyingKey, SignatureError> {
    VerifyingKey::from_public_key_pem(pem).map_err(|e| SignatureError::Key(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(version: u64) -> GlobalHead {
        GlobalHead {
            federation: "fleet".into(),
            model: "head-ct-ich".into(),
            version,
            base_version: version - 1,
            round: 4,
            blob: "c".repeat(64),
            size: 1000,
            count: 1,
            aggregator: "fedavg".into(),
            participants: 3,
        }
    }

    #[test]
    fn a_signed_head_verifies_and_every_tampering_is_refused() {
        let key = SigningKey::generate(&mut rand_core::OsRng);
        let other = SigningKey::generate(&mut rand_core::OsRng);
        let trusted = key.verifying_key();
        let signed = head(5).sign(&key);
        assert_eq!(
            signed.verify(&trusted, "fleet", "head-ct-ich", 4),
            Ok(&head(5))
        );
        let mut tampered = signed.clone();
        tampered.head.participants = 30;
        assert_eq!(
            tampered.verify(&trusted, "fleet", "head-ct-ich", 4),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            head(5)
                .sign(&other)
                .verify(&trusted, "fleet", "head-ct-ich", 4),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            signed.verify(&trusted, "fleet", "head-ct-ich", 5),
            Err(SignatureError::NotNewer {
                installed: 5,
                got: 5
            })
        );
        assert!(matches!(
            signed.verify(&trusted, "fleet", "other-model", 4),
            Err(SignatureError::Model { .. })
        ));
        let mut unsigned = signed.clone();
        unsigned.signature = String::new();
        assert_eq!(
            unsigned.verify(&trusted, "fleet", "head-ct-ich", 4),
            Err(SignatureError::Malformed)
        );
        // Through a frame and back, the signature still verifies.
        let frame = crate::frame::encode(&crate::message::Message::GlobalHead(signed), b"");
        let (decoded, _) = crate::frame::decode(&frame).unwrap();
        let crate::message::Message::GlobalHead(decoded) = decoded else {
            panic!("{decoded:?}")
        };
        assert!(decoded.verify(&trusted, "fleet", "head-ct-ich", 4).is_ok());
    }
}
