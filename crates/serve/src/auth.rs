//! Access control: optional API keys, stored as SHA-256 hashes.
//!
//! Prices and margins are business secrets. With keys configured, every
//! route but `/ping` (and the login form) needs a key, given as
//! `Authorization: Bearer <key>`, `x-api-key: <key>`, or the console's
//! cookie (set by `POST /login`, `HttpOnly`, `SameSite=Strict`); routes under
//! `/admin/` need a key with the `admin` role. Only the hashes are
//! configured, so a leaked configuration file does not leak a key.
//!
//! Keys file (TOML):
//! ```toml
//! [[keys]]
//! name = "pricing-team"
//! sha256 = "<64 hex digits: printf %s \"$KEY\" | sha256sum>"
//! role = "read"        # or "admin"
//! revoked = false      # true: the key is refused, and says it was revoked
//! ```
//! or the environment: `PRICE_API_KEYS="name:role:sha256,..."`.

use axum::http::{HeaderMap, header};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::ServeError;

/// The cookie the console's login form sets.
pub const COOKIE: &str = "price_api_key";

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Read the API and the console.
    #[default]
    Read,
    /// Also change state: reload, cache clear.
    Admin,
}

/// One configured key.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Who holds it (logged with each request, never the key).
    pub name: String,
    /// SHA-256 of the key, lowercase hex.
    pub sha256: String,
    /// What it may do.
    #[serde(default)]
    pub role: Role,
    /// A revoked key is refused with a message that says so.
    #[serde(default)]
    pub revoked: bool,
}

/// The configured keys; none: access control is off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The keys.
    #[serde(default)]
    pub keys: Vec<ApiKey>,
}

/// Why a request was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No key was presented.
    Missing,
    /// The key matches no configured hash.
    Wrong,
    /// The key was revoked.
    Revoked(String),
    /// The key may not do this.
    Forbidden(String),
}

impl Denied {
    /// The metrics label.
    pub fn label(&self) -> &'static str {
        match self {
            Denied::Missing => "missing",
            Denied::Wrong => "wrong",
            Denied::Revoked(_) => "revoked",
            Denied::Forbidden(_) => "forbidden",
        }
    }

    /// The message for the client.
    pub fn message(&self) -> String {
        match self {
            Denied::Missing => {
                "an API key is required (Authorization: Bearer <key>, or x-api-key)".into()
            }
            Denied::Wrong => "the API key is not valid".into(),
            Denied::Revoked(name) => format!("the API key `{name}` was revoked"),
            Denied::Forbidden(name) => {
                format!("the API key `{name}` may not change state: an admin key is required")
            }
        }
    }
}

/// SHA-256 of a key, lowercase hex (what the configuration stores).
pub fn hash_key(key: &str) -> String {
    Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compares without an early exit, so the time taken says nothing about
/// how much of a hash matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl AuthConfig {
    /// Reads a keys file (TOML, see the module docs).
    pub fn from_toml(text: &str, origin: &str) -> Result<Self, ServeError> {
        let config: Self = toml::from_str(text)
            .map_err(|e| ServeError::Config(format!("{origin}: {}", e.message())))?;
        config.validated(origin)
    }

    /// Reads `name:role:sha256` entries separated by commas.
    pub fn from_spec(spec: &str, origin: &str) -> Result<Self, ServeError> {
        let mut keys = Vec::new();
        for (i, entry) in spec.split(',').map(str::trim).enumerate() {
            if entry.is_empty() {
                continue;
            }
            let parts: Vec<&str> = entry.split(':').collect();
            let [name, role, sha256] = parts[..] else {
                return Err(ServeError::Config(format!(
                    "{origin}: entry {} is not `name:role:sha256`",
                    i + 1
                )));
            };
            let role = match role {
                "read" => Role::Read,
                "admin" => Role::Admin,
                other => {
                    return Err(ServeError::Config(format!(
                        "{origin}: entry {} has role `{other}` (read or admin)",
                        i + 1
                    )));
                }
            };
            keys.push(ApiKey {
                name: name.to_string(),
                sha256: sha256.to_string(),
                role,
                revoked: false,
            });
        }
        Self { keys }.validated(origin)
    }

    fn validated(mut self, origin: &str) -> Result<Self, ServeError> {
        let mut names = std::collections::BTreeSet::new();
        for key in &mut self.keys {
            key.sha256 = key.sha256.trim().to_ascii_lowercase();
            if key.name.trim().is_empty() {
                return Err(ServeError::Config(format!("{origin}: a key has no name")));
            }
            if key.sha256.len() != 64 || !key.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(ServeError::Config(format!(
                    "{origin}: key `{}`: sha256 must be 64 hex digits (printf %s \"$KEY\" | sha256sum)",
                    key.name
                )));
            }
            if !names.insert(key.name.clone()) {
                return Err(ServeError::Config(format!(
                    "{origin}: two keys are named `{}`",
                    key.name
                )));
            }
        }
        Ok(self)
    }

    /// Keys from a keys file and/or a `name:role:sha256,...` list (as the
    /// binaries read `--api-keys` / `PRICE_API_KEYS_FILE` and
    /// `PRICE_API_KEYS`); neither: access control is off.
    pub fn load(file: Option<&std::path::Path>, spec: Option<&str>) -> Result<Self, ServeError> {
        let mut keys = Vec::new();
        if let Some(path) = file {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path)
                .map_err(|e| ServeError::Config(format!("reading {origin}: {e}")))?;
            keys.extend(Self::from_toml(&text, &origin)?.keys);
        }
        if let Some(spec) = spec {
            keys.extend(Self::from_spec(spec, "PRICE_API_KEYS")?.keys);
        }
        Self { keys }.validated("API keys")
    }

    /// Whether access control is on.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The key `presented` matches, if it is valid and not revoked.
    pub fn check(&self, presented: Option<&str>) -> Result<&ApiKey, Denied> {
        let presented = presented.ok_or(Denied::Missing)?;
        let hash = hash_key(presented);
        let key = self
            .keys
            .iter()
            .find(|k| same(k.sha256.as_bytes(), hash.as_bytes()))
            .ok_or(Denied::Wrong)?;
        if key.revoked {
            return Err(Denied::Revoked(key.name.clone()));
        }
        Ok(key)
    }
}

/// The key a request presents: bearer token, `x-api-key`, or the console
/// cookie, in that order.
pub fn presented(headers: &HeaderMap) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if let Some(token) = v
            .get(..7)
            .filter(|p| p.eq_ignore_ascii_case("bearer "))
            .map(|_| v[7..].trim())
        {
            return Some(token.to_string());
        }
    }
    if let Some(v) = headers.get("x-api-key").and_then(|v| v.to_str().ok()) {
        return Some(v.trim().to_string());
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| {
            url::form_urlencoded::parse(format!("k={value}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
                .unwrap_or_default()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AuthConfig {
        AuthConfig::from_toml(
            &format!(
                "[[keys]]\nname = \"team\"\nsha256 = \"{}\"\n\n[[keys]]\nname = \"ops\"\nsha256 = \"{}\"\nrole = \"admin\"\n\n[[keys]]\nname = \"old\"\nsha256 = \"{}\"\nrevoked = true\n",
                hash_key("read-key"),
                hash_key("admin-key"),
                hash_key("old-key")
            ),
            "keys.toml",
        )
        .unwrap()
    }

    #[test]
    fn keys_are_checked_by_hash_and_revocation_says_so() {
        let c = config();
        assert!(c.enabled());
        assert_eq!(c.check(Some("read-key")).unwrap().role, Role::Read);
        assert_eq!(c.check(Some("admin-key")).unwrap().role, Role::Admin);
        assert_eq!(c.check(None), Err(Denied::Missing));
        assert_eq!(c.check(Some("guess")), Err(Denied::Wrong));
        assert_eq!(c.check(Some("old-key")), Err(Denied::Revoked("old".into())));
    }

    #[test]
    fn bad_configuration_names_the_problem() {
        let e = AuthConfig::from_toml("[[keys]]\nname = \"a\"\nsha256 = \"xyz\"\n", "k.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("k.toml") && e.contains("64 hex"), "{e}");
        let e = AuthConfig::from_toml("[[keys]]\nname = \"a\"\nsha = \"x\"\n", "k.toml")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field") && e.contains("sha"), "{e}");
        let e = AuthConfig::from_spec("a:owner:00", "PRICE_API_KEYS")
            .unwrap_err()
            .to_string();
        assert!(e.contains("role `owner`"), "{e}");
        let spec = format!("a:admin:{}", hash_key("k"));
        let c = AuthConfig::from_spec(&spec, "PRICE_API_KEYS").unwrap();
        assert_eq!(c.check(Some("k")).unwrap().name, "a");
    }

    #[test]
    fn the_key_is_read_from_bearer_header_or_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(presented(&h), None);
        h.insert(header::COOKIE, "a=b; price_api_key=c%2Bd".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("c+d"));
        h.insert("x-api-key", "x".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("x"));
        h.insert(header::AUTHORIZATION, "Bearer  tok ".parse().unwrap());
        assert_eq!(presented(&h).as_deref(), Some("tok"));
    }
}
