//! SHA-256 of a stream, as lowercase hex: how model packages and firmware bundles check the
//! files they name.

use sha2::{Digest, Sha256};
use std::io::Read;

/// SHA-256 of everything `reader` yields, read in 64 KiB pieces, as lowercase hex.
pub fn sha256_hex(mut reader: impl Read) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_hash_of_abc_is_the_standard_one() {
        assert_eq!(
            super::sha256_hex(&b"abc"[..]).unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
