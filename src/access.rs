//! API tokens and roles (`--api-tokens PATH`): who may use which HTTP route.
//!
//! The file holds one token per line, `ROLE TOKEN`, where ROLE is `read`, `write` or
//! `admin`; blank lines and lines starting with `#` are ignored. Clients send
//! `Authorization: Bearer TOKEN`. Each role may do what the one before it may, and more:
//!
//! | role | may |
//! |---|---|
//! | (none) | `GET /health`, `GET /ready` (orchestrators probe them), and `GET /`: the status page's HTML, which holds no data (a browser cannot send a bearer token when it opens a page; the page asks for a token when its data request gets 401) |
//! | read | GET on `/kv`, `/kv/{key}`, `/watch`, every `/cluster/*` route (the status page's data), `/metrics` |
//! | write | PUT and DELETE on `/kv/{key}` |
//! | admin | everything: `POST /cluster/leave`, `/admin/*`, and any other route or method |
//!
//! A missing or unknown token is answered 401 with `WWW-Authenticate: Bearer`, a known token
//! with too small a role 403 ([`crate::api`] chooses the codes). A request for a route that
//! does not exist needs `admin`, so a client without a token cannot map the API. Tokens are
//! compared in constant time (the `subtle` crate), against every entry, so the time an
//! answer takes does not tell how much of a token was right, nor which line matched.
//!
//! This module is pure: the table, the file format and the decision. The HTTP layer asks
//! [`Tokens::decide`] before it routes a request; `SIGHUP` reloads the file
//! ([`crate::server::NodeHandle::reload_tokens`]).

use std::path::Path;

use subtle::ConstantTimeEq;

use crate::error::{Error, Result};

/// What a token allows, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    fn parse(s: &str) -> Option<Role> {
        match s {
            "read" => Some(Role::Read),
            "write" => Some(Role::Write),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The role's name in the token file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// Shortest token accepted: 16 characters (`openssl rand -hex 16` gives 32), so that a token
/// cannot be guessed by trying.
pub const MIN_TOKEN_CHARS: usize = 16;

/// The token of an `Authorization: Bearer TOKEN` header. The scheme's name is
/// case-insensitive (RFC 9110 section 11.1): `bearer TOKEN` counts too.
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    (scheme.eq_ignore_ascii_case(b"bearer ")).then_some(rest)
}

/// Whether a request may go on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No token, or one that is not in the file: 401.
    Unauthorized,
    /// A known token whose role is too small: 403.
    Forbidden {
        needs: Role,
        has: Role,
    },
}

/// The tokens of a node.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    entries: Vec<(Role, Vec<u8>)>,
}

impl Tokens {
    /// Parses the token file format. Every message names the line.
    pub fn parse(text: &str) -> Result<Tokens> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            let (Some(role), Some(token), None) = (words.next(), words.next(), words.next()) else {
                return Err(Error::invalid(format!(
                    "--api-tokens line {}: expected `ROLE TOKEN`",
                    n + 1
                )));
            };
            let role = Role::parse(role).ok_or_else(|| {
                Error::invalid(format!(
                    "--api-tokens line {}: unknown role {role:?} (read, write or admin)",
                    n + 1
                ))
            })?;
            if token.chars().count() < MIN_TOKEN_CHARS {
                return Err(Error::invalid(format!(
                    "--api-tokens line {}: a token needs at least {MIN_TOKEN_CHARS} characters, \
                     this one has {} (make one with `openssl rand -hex 16`)",
                    n + 1,
                    token.chars().count()
                )));
            }
            entries.push((role, token.as_bytes().to_vec()));
        }
        if entries.is_empty() {
            return Err(Error::invalid(
                "--api-tokens: the file holds no token, so nobody could use the API",
            ));
        }
        Ok(Tokens { entries })
    }

    /// Reads and parses a token file.
    pub fn load(path: &Path) -> Result<Tokens> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::invalid(format!("--api-tokens {}: {e}", path.display())))?;
        Tokens::parse(&text)
    }

    /// The role of `token`, if it is in the file. Every entry is compared, in constant time.
    pub fn role_of(&self, token: &[u8]) -> Option<Role> {
        let mut found = None;
        for (role, known) in &self.entries {
            if bool::from(known.as_slice().ct_eq(token)) {
                found = found.max(Some(*role));
            }
        }
        found
    }

    /// Decides a request that `needs` a role (`None`: open to all, the route table's
    /// [`crate::api::routes::Spec::role`]) from its `Authorization` header.
    pub fn decide(&self, needs: Option<Role>, authorization: Option<&[u8]>) -> Decision {
        let Some(needs) = needs else {
            return Decision::Allow;
        };
        let token = authorization.and_then(bearer_token);
        match token.and_then(|t| self.role_of(t.trim_ascii())) {
            None => Decision::Unauthorized,
            Some(has) if has >= needs => Decision::Allow,
            Some(has) => Decision::Forbidden { needs, has },
        }
    }
}

/// A token file and its current contents, reloadable.
#[derive(Debug)]
pub struct TokenFile {
    path: std::path::PathBuf,
    current: std::sync::RwLock<std::sync::Arc<Tokens>>,
}

impl TokenFile {
    /// Loads the file; fails (exit 2) if it cannot be read or parsed.
    pub fn open(path: &Path) -> Result<TokenFile> {
        Ok(TokenFile {
            path: path.to_path_buf(),
            current: std::sync::RwLock::new(std::sync::Arc::new(Tokens::load(path)?)),
        })
    }

    /// The tokens in force.
    pub fn tokens(&self) -> std::sync::Arc<Tokens> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Reads the file again. On error the tokens in force stay, and the error says why.
    pub fn reload(&self) -> Result<usize> {
        let fresh = Tokens::load(&self.path)?;
        let n = fresh.entries.len();
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = std::sync::Arc::new(fresh);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str =
        "# tokens\nread r-token-0123456789\n\nwrite w-token-0123456789\nadmin a-token-0123456789\n";

    fn decide(needs: Option<Role>, token: Option<&str>) -> Decision {
        let header = token.map(|t| format!("Bearer {t}"));
        Tokens::parse(FILE)
            .unwrap()
            .decide(needs, header.as_deref().map(str::as_bytes))
    }

    /// Every role a route may need against every token (the routes' roles are
    /// `api::routes`' table, tested there).
    #[test]
    fn the_role_table() {
        use Decision::*;
        for needs in [None, Some(Role::Read), Some(Role::Write), Some(Role::Admin)] {
            for (token, has) in [
                ("r-token-0123456789", Role::Read),
                ("w-token-0123456789", Role::Write),
                ("a-token-0123456789", Role::Admin),
            ] {
                let expect = match needs {
                    Some(n) if has < n => Forbidden { needs: n, has },
                    _ => Allow,
                };
                assert_eq!(decide(needs, Some(token)), expect, "{needs:?} {token}");
            }
            let anonymous = if needs.is_some() { Unauthorized } else { Allow };
            assert_eq!(decide(needs, None), anonymous, "{needs:?}");
            assert_eq!(decide(needs, Some("wrong")), anonymous, "{needs:?}");
        }
    }

    #[test]
    fn only_a_whole_bearer_token_counts() {
        let t = Tokens::parse(FILE).unwrap();
        assert_eq!(t.role_of(b"r-token-0123456789"), Some(Role::Read));
        assert_eq!(t.role_of(b"r-token-012345678"), None);
        assert_eq!(t.role_of(b"r-token-01234567892"), None);
        assert_eq!(t.role_of(b""), None);
        assert_eq!(
            t.decide(Some(Role::Read), Some(b"Basic r-token-0123456789")),
            Decision::Unauthorized
        );
        // The scheme's name is case-insensitive (RFC 9110 section 11.1).
        for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
            let header = format!("{scheme} r-token-0123456789");
            assert_eq!(
                t.decide(Some(Role::Read), Some(header.as_bytes())),
                Decision::Allow,
                "{scheme}"
            );
        }
        assert_eq!(
            t.decide(Some(Role::Read), Some(b"Bearerr-token-0123456789")),
            Decision::Unauthorized
        );
    }

    #[test]
    fn bad_files_name_their_line() {
        let err = Tokens::parse("read 0123456789abcdef\nroot x\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("root"), "{err}");
        let err = Tokens::parse("read\n").unwrap_err().to_string();
        assert!(err.contains("line 1"), "{err}");
        // Too short to resist guessing: refused, naming the line and the minimum.
        let err = Tokens::parse("read 0123456789abcdef\nwrite short\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2") && err.contains("16"), "{err}");
        assert!(Tokens::parse("read 0123456789abcdef\n").is_ok());
        assert!(Tokens::parse("# nothing\n").is_err());
    }
}
