//! The cluster secret (`--cluster-secret-file`): what every member of a secured ring shares,
//! and the keys derived from it.
//!
//! The file's bytes (surrounding whitespace trimmed) are the secret; at least
//! [`MIN_SECRET_BYTES`] of them. Like an ssh key, the file must not be readable by group or
//! other, or the node refuses to start (exit code 2). The secret is never logged: its `Debug`
//! form is a placeholder.
//!
//! Each use gets its own key, `HMAC-SHA256(secret, "ringkv/" + purpose)`, so a MAC made for
//! gossip can never pass as one made for RPC ([`ClusterSecret::derive`]). HMAC-SHA256 comes
//! from the RustCrypto `hmac` and `sha2` crates; tags are compared in constant time.

use std::fmt;
use std::path::Path;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

use crate::error::{Error, Result};

/// Fewest bytes a secret may have: 128 bits, if random (`openssl rand -hex 32` gives 64).
pub const MIN_SECRET_BYTES: usize = 16;

/// HMAC-SHA256.
pub type HmacSha256 = Hmac<Sha256>;

/// The shared secret of a ring.
#[derive(Clone)]
pub struct ClusterSecret {
    bytes: Vec<u8>,
}

impl fmt::Debug for ClusterSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ClusterSecret(<redacted>)")
    }
}

impl ClusterSecret {
    /// Reads the secret from `path`, refusing a file that group or other may read.
    pub fn load(path: &Path) -> Result<ClusterSecret> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| Error::invalid(format!("--cluster-secret-file {shown}: {e}")))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(Error::invalid(format!(
                    "--cluster-secret-file {shown} is readable by group or other (mode {mode:o}); \
                     run `chmod 600 {shown}`"
                )));
            }
        }
        let raw = std::fs::read(path)
            .map_err(|e| Error::invalid(format!("--cluster-secret-file {shown}: {e}")))?;
        ClusterSecret::from_bytes(raw.trim_ascii())
            .map_err(|e| Error::invalid(format!("--cluster-secret-file {shown}: {e}")))
    }

    /// A secret from its bytes (tests, and [`ClusterSecret::load`]).
    pub fn from_bytes(bytes: &[u8]) -> Result<ClusterSecret> {
        if bytes.len() < MIN_SECRET_BYTES {
            return Err(Error::invalid(format!(
                "a cluster secret needs at least {MIN_SECRET_BYTES} bytes, got {}",
                bytes.len()
            )));
        }
        Ok(ClusterSecret {
            bytes: bytes.to_vec(),
        })
    }

    /// The key for one purpose (`"rpc"`, `"gossip"`): HMAC-SHA256 of the purpose under the
    /// secret.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        mac(&self.bytes, &[b"ringkv/", purpose.as_bytes()])
    }
}

/// HMAC-SHA256 under `key` of the concatenation of `parts`.
pub fn mac(key: &[u8], parts: &[&[u8]]) -> [u8; 32] {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        m.update(p);
    }
    m.finalize().into_bytes().into()
}

/// Whether `tag` is the HMAC-SHA256 under `key` of `parts`, compared in constant time.
pub fn verify(key: &[u8], parts: &[&[u8]], tag: &[u8]) -> bool {
    let mut m = <HmacSha256 as KeyInit>::new_from_slice(key).expect("HMAC takes keys of any size");
    for p in parts {
        m.update(p);
    }
    m.verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn purposes_get_different_keys_and_debug_hides_the_secret() {
        let s = ClusterSecret::from_bytes(b"0123456789abcdef0123").unwrap();
        assert_ne!(s.derive("rpc"), s.derive("gossip"));
        assert_eq!(s.derive("rpc"), s.derive("rpc"));
        assert!(!format!("{s:?}").contains("0123"));
    }

    #[test]
    fn short_secrets_are_refused() {
        assert!(ClusterSecret::from_bytes(b"short").is_err());
    }

    #[test]
    fn a_tag_verifies_only_for_its_key_and_message() {
        let tag = mac(b"k1", &[b"a", b"b"]);
        assert!(verify(b"k1", &[b"ab"], &tag));
        assert!(!verify(b"k2", &[b"ab"], &tag));
        assert!(!verify(b"k1", &[b"ac"], &tag));
        assert!(!verify(b"k1", &[b"ab"], &tag[..31]));
    }

    #[cfg(unix)]
    #[test]
    fn a_file_readable_by_others_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("ringkv-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("secret");
        std::fs::write(&path, "0123456789abcdef0123\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = ClusterSecret::load(&path).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = ClusterSecret::load(&path).unwrap();
        assert_eq!(
            s.derive("x"),
            ClusterSecret::from_bytes(b"0123456789abcdef0123")
                .unwrap()
                .derive("x")
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
