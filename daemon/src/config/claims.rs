//! `[sessions.claims]` and a provider instance's `claims`: which facts about the user go
//! into the session access token, for services to authorise on without a round trip.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;

/// Which facts about the user an access token carries. All off by default: the token then
/// holds ids only, as before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClaimsConfig {
    /// The user's primary email (`email`).
    pub email: bool,
    /// Whether that email is verified (`email_verified`).
    pub email_verified: bool,
    /// The user's Lanyard username (`username`).
    pub username: bool,
    /// The groups of the identity the session logged in with (`groups`), after the filters
    /// below, at most `max_groups` of them and 3 KiB of names in all (`groups_truncated: true` when
    /// some were left out).
    pub groups: bool,
    /// Only groups starting with one of these (none: no prefix filter).
    pub group_prefixes: Vec<String>,
    /// Only these groups (none: no list filter). With prefixes too, a group passes either.
    pub allowed_groups: Vec<String>,
    /// At most this many groups (1 to 100).
    pub max_groups: usize,
    /// Roles (`roles`), each granted by any of its groups (of the identity's, before the
    /// filters): `admin = ["acme/platform-admins"]`.
    pub roles: BTreeMap<String, Vec<String>>,
}

impl Default for ClaimsConfig {
    fn default() -> Self {
        Self {
            email: false,
            email_verified: false,
            username: false,
            groups: false,
            group_prefixes: Vec::new(),
            allowed_groups: Vec::new(),
            max_groups: DEFAULT_MAX_GROUPS,
            roles: BTreeMap::new(),
        }
    }
}

/// `max_groups` when not set, and the most it may be.
pub const DEFAULT_MAX_GROUPS: usize = 50;
pub const MAX_GROUPS: usize = 100;
/// The most roles, and groups per filter or role, a config may name.
const MAX_NAMES: usize = 256;

impl ClaimsConfig {
    /// Whether the token carries anything beyond ids.
    pub fn any(&self) -> bool {
        self.email || self.email_verified || self.username || self.groups || !self.roles.is_empty()
    }

    /// Checks the bounds; `key` is where the section sits (`sessions.claims`).
    pub fn validate(&self, key: &str) -> Result<(), ConfigError> {
        let at = |k: &str| format!("{key}.{k}");
        if !(1..=MAX_GROUPS).contains(&self.max_groups) {
            return Err(ConfigError::at(
                at("max_groups"),
                format!("must be between 1 and {MAX_GROUPS}"),
            ));
        }
        let lists = [
            ("group_prefixes", &self.group_prefixes),
            ("allowed_groups", &self.allowed_groups),
        ];
        for (name, list) in lists {
            if list.len() > MAX_NAMES || list.iter().any(|g| g.is_empty() || g.len() > 1024) {
                return Err(ConfigError::at(
                    at(name),
                    format!("at most {MAX_NAMES} entries of 1 to 1024 bytes"),
                ));
            }
        }
        if self.roles.len() > MAX_NAMES {
            return Err(ConfigError::at(
                at("roles"),
                format!("at most {MAX_NAMES} roles"),
            ));
        }
        for (role, groups) in &self.roles {
            let name_ok =
                !role.is_empty() && role.len() <= 64 && !role.chars().any(char::is_control);
            if !name_ok || groups.is_empty() || groups.len() > MAX_NAMES {
                return Err(ConfigError::at(
                    at(&format!("roles.{role}")),
                    format!("a role is 1 to 64 characters, granted by 1 to {MAX_NAMES} groups"),
                ));
            }
        }
        Ok(())
    }
}
