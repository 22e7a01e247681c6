//! The token PIN that the unseal secret stands for.

use crate::crypto::UnsealSecret;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

/// Domain of the derivation: a new scheme gets a new label, never reuses
/// this one.
const LABEL: &[u8] = b"KMS-TOKEN-USER-PIN-V1";
const BLOCK: usize = 64;

/// The user PIN of a sealed token: upper-case hex of
/// HMAC-SHA256(S, "KMS-TOKEN-USER-PIN-V1"). 64 characters drawn from 256
/// bits, so guessing it is no easier than guessing S, and the token's own
/// retry counter is never the only defence.
pub fn token_pin(secret: &UnsealSecret) -> Zeroizing<String> {
    let mac = hmac_sha256(secret.as_bytes(), LABEL);
    Zeroizing::new(hex::encode_upper(&mac[..]))
}

/// RFC 2104 over SHA-256 (the `hmac` crate would be one more dependency for
/// these few lines; the RFC 4231 vectors below pin it down). Every
/// intermediate holding key bits is wiped.
fn hmac_sha256(key: &[u8], msg: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; BLOCK]);
    if key.len() > BLOCK {
        let d = Sha256::digest(key);
        k[..d.len()].copy_from_slice(&d);
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let mut ipad = Zeroizing::new([0x36u8; BLOCK]);
    let mut opad = Zeroizing::new([0x5cu8; BLOCK]);
    for i in 0..BLOCK {
        ipad[i] ^= k[i];
        opad[i] ^= k[i];
    }
    let inner = Zeroizing::new(
        Sha256::new()
            .chain_update(&ipad[..])
            .chain_update(msg)
            .finalize(),
    );
    let outer = Sha256::new()
        .chain_update(&opad[..])
        .chain_update(&inner[..])
        .finalize();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&outer);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_rfc4231() {
        // Test case 2.
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        assert_eq!(
            hex::encode(&mac[..]),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // Test case 6: a key longer than the block is hashed first.
        let key = [0xaau8; 131];
        let mac = hmac_sha256(
            &key,
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(
            hex::encode(&mac[..]),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }

    #[test]
    fn the_pin_is_64_upper_hex_and_depends_on_the_secret() {
        let a =
            UnsealSecret::from_bytes(&[7u8; 31].iter().chain(&[8u8]).copied().collect::<Vec<_>>())
                .unwrap();
        let b =
            UnsealSecret::from_bytes(&[9u8; 31].iter().chain(&[8u8]).copied().collect::<Vec<_>>())
                .unwrap();
        let pa = token_pin(&a);
        assert_eq!(pa.len(), 64);
        assert!(pa
            .bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase()));
        assert_ne!(*pa, *token_pin(&b));
        assert_eq!(*pa, *token_pin(&a));
    }
}
