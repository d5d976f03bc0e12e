//! Join tokens: `SWMTKN-1-<root CA digest>-<secret>`, as SwarmKit makes them.
//!
//! The digest is the SHA-256 of the swarm's root CA certificate (the bytes its CA
//! hands out), written in base 36 and padded to 50 digits; the secret is 25 base-36
//! digits. The digest lets a joining node check, before it trusts anything, that
//! the manager it reached serves the swarm the token is for.

use std::fmt;

const PREFIX: &str = "SWMTKN-1-";
const DIGEST_DIGITS: usize = 50;
const SECRET_DIGITS: usize = 25;

/// A well-formed join token. `Debug` never prints its secret.
pub(crate) struct JoinToken {
    text: String,
    ca_digest: [u8; 32],
}

impl JoinToken {
    /// Reads a token, saying what is wrong with a malformed one.
    pub(crate) fn parse(text: &str) -> Result<JoinToken, String> {
        let malformed = |why: &str| format!("malformed join token: {why} (expected SWMTKN-1-...)");
        let rest = text
            .strip_prefix(PREFIX)
            .ok_or_else(|| malformed("it does not start with SWMTKN-1-"))?;
        let (digest, secret) = rest
            .split_once('-')
            .ok_or_else(|| malformed("it has no secret part"))?;
        if digest.len() != DIGEST_DIGITS || secret.len() != SECRET_DIGITS {
            return Err(malformed("its parts have the wrong lengths"));
        }
        if !secret.bytes().all(is_base36_digit) {
            return Err(malformed("its secret is not base 36"));
        }
        let ca_digest = base36_to_256_bits(digest)
            .ok_or_else(|| malformed("its root CA digest is not a base-36 SHA-256"))?;
        Ok(JoinToken {
            text: text.to_owned(),
            ca_digest,
        })
    }

    /// The token as the manager takes it.
    pub(crate) fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `root_ca` (the certificate bytes the manager's CA returned) is the
    /// root CA the token names.
    pub(crate) fn names_root_ca(&self, root_ca: &[u8]) -> bool {
        ring::digest::digest(&ring::digest::SHA256, root_ca).as_ref() == self.ca_digest
    }
}

impl fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("JoinToken(<redacted>)")
    }
}

fn is_base36_digit(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_lowercase()
}

/// A base-36 number of at most 256 bits, big-endian; `None` for a bad digit or
/// a number too large.
fn base36_to_256_bits(text: &str) -> Option<[u8; 32]> {
    // Eight 32-bit limbs, least significant first.
    let mut limbs = [0u32; 8];
    for b in text.bytes() {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'z' => b - b'a' + 10,
            _ => return None,
        };
        let mut carry = u64::from(digit);
        for limb in &mut limbs {
            let value = u64::from(*limb) * 36 + carry;
            *limb = value as u32;
            carry = value >> 32;
        }
        if carry != 0 {
            return None;
        }
    }
    let mut bytes = [0u8; 32];
    for (chunk, limb) in bytes.chunks_exact_mut(4).zip(limbs.iter().rev()) {
        chunk.copy_from_slice(&limb.to_be_bytes());
    }
    Some(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_names_the_digest_it_encodes() {
        // The digest of b"root" is written in base 36 as SwarmKit writes it.
        let digest = ring::digest::digest(&ring::digest::SHA256, b"root");
        let mut n = digest.as_ref().to_vec();
        let mut digits = Vec::new();
        while n.iter().any(|b| *b != 0) {
            let mut rem = 0u32;
            for b in &mut n {
                let value = (rem << 8) | u32::from(*b);
                *b = (value / 36) as u8;
                rem = value % 36;
            }
            digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[rem as usize]);
        }
        digits.resize(DIGEST_DIGITS, b'0');
        digits.reverse();
        let text = format!(
            "SWMTKN-1-{}-{}",
            String::from_utf8(digits).unwrap(),
            "a".repeat(25)
        );
        let token = JoinToken::parse(&text).unwrap();
        assert!(token.names_root_ca(b"root"));
        assert!(!token.names_root_ca(b"other"));
        assert_eq!(format!("{token:?}"), "JoinToken(<redacted>)");
    }

    #[test]
    fn malformed_tokens_say_why() {
        for (text, why) in [
            ("abc", "does not start"),
            ("SWMTKN-1-abc", "no secret"),
            ("SWMTKN-1-abc-def", "wrong lengths"),
            (
                &format!("SWMTKN-1-{}-{}", "z".repeat(50), "a".repeat(25)),
                "not a base-36 SHA-256",
            ),
            (
                &format!("SWMTKN-1-{}-{}", "0".repeat(50), "A".repeat(25)),
                "secret is not base 36",
            ),
        ] {
            let error = JoinToken::parse(text).unwrap_err();
            assert!(error.contains(why), "{text}: {error}");
        }
    }
}
