//! The route table: every route of the HTTP API, parsed once per request.
//!
//! [`Route::parse`] names the route a path belongs to, and with it everything the server
//! needs to know about it before a handler runs: its metric label (a fixed set, so a key never
//! becomes a label), and for each method it takes the role a token needs ([`crate::access`])
//! and the query parameters it knows. A new route is one arm in [`Route::parse`] and one in
//! the dispatch (`api::dispatch`), so the label, the roles and the methods cannot drift apart.

use hyper::Method;

use crate::access::Role;
use crate::error::{Error, Result};

/// A route of the HTTP API. Key routes carry the key as it is in the path (percent-encoded);
/// the handler decodes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/kv/{key}`: GET, HEAD, PUT, DELETE.
    Key(&'a str),
    /// `/kv`: the listing.
    List,
    /// `/watch`: a WebSocket of changes.
    Watch,
    /// `/`: the status page.
    StatusPage,
    /// `/cluster/status`.
    ClusterStatus,
    /// `/cluster/members`.
    Members,
    /// `/cluster/ring`.
    Ring,
    /// `/cluster/replicas/{key}`.
    Replicas(&'a str),
    /// `/cluster/leave`.
    Leave,
    /// `/admin/stats`.
    Stats,
    /// `/admin/stages`.
    Stages,
    /// `/admin/local/{key}`.
    Local(&'a str),
    /// `/admin/backup`: this node's copies of one ring segment.
    Backup,
    /// `/admin/restore`: merge a batch of keys into their homes.
    Restore,
    /// `/metrics`.
    Metrics,
    /// `/health`.
    Health,
    /// `/ready`.
    Ready,
    /// No such route: 404.
    Unknown,
}

/// The methods routes take: a plain enum, so the table is `const`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Get,
    Head,
    Put,
    Delete,
    Post,
}

impl Verb {
    /// The verb of `method`, if a route takes it.
    pub fn of(method: &Method) -> Option<Verb> {
        Some(match *method {
            Method::GET => Verb::Get,
            Method::HEAD => Verb::Head,
            Method::PUT => Verb::Put,
            Method::DELETE => Verb::Delete,
            Method::POST => Verb::Post,
            _ => return None,
        })
    }

    /// Its name, as in an `allow` header.
    pub fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Head => "HEAD",
            Verb::Put => "PUT",
            Verb::Delete => "DELETE",
            Verb::Post => "POST",
        }
    }
}

/// One method a route takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allow {
    pub method: Verb,
    /// The role a token needs, or `None` for a route open to all.
    pub role: Option<Role>,
    /// The query parameters it knows: any other is refused (400), so that a typo such as
    /// `?tll=5` is not silently ignored. `None` leaves the query unchecked.
    pub params: Option<&'static [&'static str]>,
}

/// A route's label and methods.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The metric label (`ringkv_http_requests_total{route=...}`).
    pub label: &'static str,
    /// The methods it takes.
    pub allow: &'static [Allow],
    /// The role a method it does not take needs (before the 405): so that a wrong method
    /// tells an anonymous caller no more than a right one.
    pub otherwise: Option<Role>,
}

const fn allow(method: Verb, role: Option<Role>) -> Allow {
    Allow {
        method,
        role,
        params: None,
    }
}

const fn allow_params(method: Verb, role: Option<Role>, params: &'static [&'static str]) -> Allow {
    Allow {
        method,
        role,
        params: Some(params),
    }
}

const READ: Option<Role> = Some(Role::Read);
const WRITE: Option<Role> = Some(Role::Write);
const ADMIN: Option<Role> = Some(Role::Admin);
const OPEN: Option<Role> = None;

/// The query parameters of each key method and of the listing and watches.
pub const GET_PARAMS: &[&str] = &["r", "pr"];
pub const PUT_PARAMS: &[&str] = &["w", "pw", "ttl", "if_absent"];
pub const DELETE_PARAMS: &[&str] = &["w", "pw", "if_absent"];
pub const LIST_PARAMS: &[&str] = &["prefix", "limit", "after", "r", "encoding"];
pub const WATCH_PARAMS: &[&str] = &["prefix", "encoding"];
pub const BACKUP_PARAMS: &[&str] = &["start", "end", "after_hash", "after_key", "prefix"];

const fn spec(label: &'static str, allow: &'static [Allow]) -> Spec {
    Spec {
        label,
        allow,
        otherwise: ADMIN,
    }
}

impl<'a> Route<'a> {
    /// The route of `path`, with its label and methods.
    pub fn parse(path: &'a str) -> (Route<'a>, Spec) {
        const GET_READ: &[Allow] = &[allow(Verb::Get, READ)];
        const GET_ADMIN: &[Allow] = &[allow(Verb::Get, ADMIN)];
        if let Some(key) = path.strip_prefix("/kv/") {
            const KEY: &[Allow] = &[
                allow_params(Verb::Get, READ, GET_PARAMS),
                // HEAD is a GET whose body hyper leaves out: `curl -I` checks a key.
                allow_params(Verb::Head, READ, GET_PARAMS),
                allow_params(Verb::Put, WRITE, PUT_PARAMS),
                allow_params(Verb::Delete, WRITE, DELETE_PARAMS),
            ];
            return (Route::Key(key), spec("kv", KEY));
        }
        if let Some(key) = path.strip_prefix("/cluster/replicas/") {
            return (Route::Replicas(key), spec("cluster_replicas", GET_READ));
        }
        if let Some(key) = path.strip_prefix("/admin/local/") {
            return (Route::Local(key), spec("admin_local", GET_ADMIN));
        }
        match path {
            "/kv" => (
                Route::List,
                spec(
                    "kv",
                    const { &[allow_params(Verb::Get, READ, LIST_PARAMS)] },
                ),
            ),
            "/watch" => (
                Route::Watch,
                spec(
                    "watch",
                    const { &[allow_params(Verb::Get, READ, WATCH_PARAMS)] },
                ),
            ),
            "/" => (
                Route::StatusPage,
                spec("root", const { &[allow(Verb::Get, OPEN)] }),
            ),
            "/cluster/status" => (Route::ClusterStatus, spec("cluster_status", GET_READ)),
            "/cluster/members" => (Route::Members, spec("cluster_members", GET_READ)),
            "/cluster/ring" => (Route::Ring, spec("cluster_ring", GET_READ)),
            "/cluster/leave" => (
                Route::Leave,
                spec("cluster_leave", const { &[allow(Verb::Post, ADMIN)] }),
            ),
            "/admin/stats" => (Route::Stats, spec("admin_stats", GET_ADMIN)),
            "/admin/backup" => (
                Route::Backup,
                spec(
                    "admin_backup",
                    const { &[allow_params(Verb::Get, ADMIN, BACKUP_PARAMS)] },
                ),
            ),
            "/admin/restore" => (
                Route::Restore,
                spec(
                    "admin_restore",
                    const { &[allow_params(Verb::Post, ADMIN, &[])] },
                ),
            ),
            "/admin/stages" => (
                Route::Stages,
                spec(
                    "admin_stages",
                    const { &[allow(Verb::Get, ADMIN), allow(Verb::Delete, ADMIN)] },
                ),
            ),
            "/metrics" => (Route::Metrics, spec("metrics", GET_READ)),
            "/health" => (
                Route::Health,
                Spec {
                    otherwise: OPEN,
                    ..spec("health", const { &[allow(Verb::Get, OPEN)] })
                },
            ),
            "/ready" => (
                Route::Ready,
                Spec {
                    otherwise: OPEN,
                    ..spec("ready", const { &[allow(Verb::Get, OPEN)] })
                },
            ),
            _ => (Route::Unknown, spec("other", &[])),
        }
    }
}

impl Spec {
    /// What `method` may do here: its entry, or a 405 naming the methods this route takes
    /// (a 404 for an unknown route).
    pub fn allows(&self, method: &Method, path: &str) -> Result<&'static Allow> {
        if let Some(a) = self.find(method) {
            return Ok(a);
        }
        if self.allow.is_empty() {
            return Err(Error::NotFound(path.to_string()));
        }
        let names: Vec<&str> = self.allow.iter().map(|a| a.method.as_str()).collect();
        Err(Error::MethodNotAllowed(names.join(", ")))
    }

    /// The role `method` needs here (`None`: open to all).
    pub fn role(&self, method: &Method) -> Option<Role> {
        self.find(method).map_or(self.otherwise, |a| a.role)
    }

    fn find(&self, method: &Method) -> Option<&'static Allow> {
        let verb = Verb::of(method)?;
        self.allow.iter().find(|a| a.method == verb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(method: &str, path: &str) -> Option<Role> {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        Route::parse(path).1.role(&method)
    }

    #[test]
    fn each_route_needs_its_role() {
        let routes: &[(&str, &str, Option<Role>)] = &[
            ("GET", "/health", None),
            ("POST", "/health", None),
            ("GET", "/ready", None),
            ("GET", "/", None),
            ("POST", "/", Some(Role::Admin)),
            ("GET", "/kv/a", Some(Role::Read)),
            ("HEAD", "/kv/a", Some(Role::Read)),
            ("GET", "/kv", Some(Role::Read)),
            ("GET", "/watch", Some(Role::Read)),
            ("GET", "/metrics", Some(Role::Read)),
            ("GET", "/cluster/members", Some(Role::Read)),
            ("GET", "/cluster/ring", Some(Role::Read)),
            ("GET", "/cluster/status", Some(Role::Read)),
            ("GET", "/cluster/replicas/k", Some(Role::Read)),
            ("PUT", "/kv/a", Some(Role::Write)),
            ("DELETE", "/kv/a", Some(Role::Write)),
            ("POST", "/cluster/leave", Some(Role::Admin)),
            ("GET", "/admin/stats", Some(Role::Admin)),
            ("GET", "/admin/stages", Some(Role::Admin)),
            ("DELETE", "/admin/stages", Some(Role::Admin)),
            ("GET", "/admin/local/k", Some(Role::Admin)),
            ("GET", "/admin/backup", Some(Role::Admin)),
            ("POST", "/admin/restore", Some(Role::Admin)),
            ("GET", "/admin/restore", Some(Role::Admin)),
            ("POST", "/kv/a", Some(Role::Admin)),
            ("PUT", "/kv", Some(Role::Admin)),
            ("GET", "/no/such/route", Some(Role::Admin)),
        ];
        for &(method, path, needs) in routes {
            assert_eq!(role(method, path), needs, "{method} {path}");
        }
    }

    #[test]
    fn paths_parse_to_their_route_and_label() {
        let cases: &[(&str, Route<'_>, &str)] = &[
            ("/kv/a/b%20c", Route::Key("a/b%20c"), "kv"),
            ("/kv/", Route::Key(""), "kv"),
            ("/kv", Route::List, "kv"),
            ("/watch", Route::Watch, "watch"),
            ("/", Route::StatusPage, "root"),
            ("/cluster/status", Route::ClusterStatus, "cluster_status"),
            ("/cluster/members", Route::Members, "cluster_members"),
            ("/cluster/ring", Route::Ring, "cluster_ring"),
            (
                "/cluster/replicas/k",
                Route::Replicas("k"),
                "cluster_replicas",
            ),
            ("/cluster/leave", Route::Leave, "cluster_leave"),
            ("/admin/stats", Route::Stats, "admin_stats"),
            ("/admin/stages", Route::Stages, "admin_stages"),
            ("/admin/local/k", Route::Local("k"), "admin_local"),
            ("/admin/backup", Route::Backup, "admin_backup"),
            ("/admin/restore", Route::Restore, "admin_restore"),
            ("/metrics", Route::Metrics, "metrics"),
            ("/health", Route::Health, "health"),
            ("/ready", Route::Ready, "ready"),
            ("/kvx", Route::Unknown, "other"),
            ("/cluster/nope", Route::Unknown, "other"),
        ];
        for &(path, route, label) in cases {
            let (r, spec) = Route::parse(path);
            assert_eq!((r, spec.label), (route, label), "{path}");
        }
    }

    #[test]
    fn a_wrong_method_is_405_naming_the_right_ones_and_an_unknown_route_404() {
        let (_, key) = Route::parse("/kv/a");
        assert!(matches!(
            key.allows(&Method::POST, "/kv/a"),
            Err(Error::MethodNotAllowed(m)) if m == "GET, HEAD, PUT, DELETE"
        ));
        assert_eq!(
            key.allows(&Method::PUT, "/kv/a").unwrap().params,
            Some(PUT_PARAMS)
        );
        let (_, stages) = Route::parse("/admin/stages");
        assert!(matches!(
            stages.allows(&Method::PUT, "/admin/stages"),
            Err(Error::MethodNotAllowed(m)) if m == "GET, DELETE"
        ));
        let (_, leave) = Route::parse("/cluster/leave");
        assert!(matches!(
            leave.allows(&Method::GET, "/cluster/leave"),
            Err(Error::MethodNotAllowed(m)) if m == "POST"
        ));
        let (_, none) = Route::parse("/nope");
        assert!(matches!(
            none.allows(&Method::GET, "/nope"),
            Err(Error::NotFound(p)) if p == "/nope"
        ));
    }
}
