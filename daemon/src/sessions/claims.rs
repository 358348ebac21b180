//! The facts about the user an access token carries, as `[sessions.claims]` (or the login's
//! instance's `claims`) chooses: computed from the user and the identity the session logged
//! in with, at the login and again from the store at every refresh.

use lanyard_proto::UserClaims;

use crate::config::ClaimsConfig;
use crate::store::{IdentityRecord, UserRecord};

/// The most bytes the group names take in a token's JSON (quotes and escapes counted):
/// with the other claims and base64, the token stays under 6 KiB, within the 8 KiB many
/// HTTP servers allow a header.
pub(crate) const MAX_GROUP_BYTES: usize = 3072;

/// The claims `config` asks for, of `user` logged in through `identity` (none: a session
/// that does not name its provider, from the previous version; it gets user facts only).
pub(crate) fn user_claims(
    config: &ClaimsConfig,
    user: &UserRecord,
    identity: Option<&IdentityRecord>,
) -> UserClaims {
    let groups: &[String] = identity.map_or(&[], |i| &i.groups);
    let mut claims = UserClaims {
        email: if config.email {
            user.email.clone()
        } else {
            None
        },
        email_verified: config.email_verified.then_some(user.email_verified),
        username: config.username.then(|| user.username.clone()),
        ..UserClaims::default()
    };
    if config.groups {
        let (kept, truncated) = filtered_groups(config, groups);
        claims.groups = Some(kept);
        claims.groups_truncated = truncated.then_some(true);
    }
    if !config.roles.is_empty() {
        let roles: Vec<String> = config
            .roles
            .iter()
            .filter(|(_, granting)| granting.iter().any(|g| groups.contains(g)))
            .map(|(role, _)| role.clone())
            .collect();
        claims.roles = Some(roles);
    }
    claims
}

/// The groups that pass the filters, in the provider's order, within `max_groups` and
/// [`MAX_GROUP_BYTES`]; and whether some that passed were left out.
fn filtered_groups(config: &ClaimsConfig, groups: &[String]) -> (Vec<String>, bool) {
    let unfiltered = config.group_prefixes.is_empty() && config.allowed_groups.is_empty();
    let passes = |g: &&String| {
        unfiltered
            || config.allowed_groups.contains(g)
            || config
                .group_prefixes
                .iter()
                .any(|p| g.starts_with(p.as_str()))
    };
    let (mut kept, mut bytes, mut truncated) = (Vec::new(), 0, false);
    for group in groups.iter().filter(passes) {
        // Its size in the token: the JSON string and a comma.
        let size = serde_json::to_string(group).map_or(usize::MAX, |s| s.len() + 1);
        if kept.len() == config.max_groups || bytes + size > MAX_GROUP_BYTES {
            truncated = true;
            break;
        }
        bytes += size;
        kept.push(group.clone());
    }
    (kept, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> UserRecord {
        UserRecord {
            id: "usr_1".into(),
            username: "ada".into(),
            email: Some("ada@example.test".into()),
            email_verified: true,
            name: None,
            picture: None,
            created_at: 0,
            disabled_at: None,
        }
    }

    fn identity(groups: &[&str]) -> IdentityRecord {
        IdentityRecord {
            provider: "github".into(),
            subject: "1".into(),
            user_id: "usr_1".into(),
            email: None,
            email_verified: false,
            groups: groups.iter().map(|g| (*g).to_owned()).collect(),
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn nothing_is_carried_unless_asked() {
        let claims = user_claims(&ClaimsConfig::default(), &user(), Some(&identity(&["a"])));
        assert_eq!(claims, UserClaims::default());
    }

    #[test]
    fn groups_are_filtered_by_prefix_or_list_and_roles_come_from_all_groups() {
        let config = ClaimsConfig {
            email: true,
            email_verified: true,
            username: true,
            groups: true,
            group_prefixes: vec!["acme/".into()],
            allowed_groups: vec!["ops".into()],
            roles: [
                ("admin".to_owned(), vec!["root".to_owned()]),
                (
                    "viewer".to_owned(),
                    vec!["acme/all".to_owned(), "x".to_owned()],
                ),
                ("nobody".to_owned(), vec!["none".to_owned()]),
            ]
            .into(),
            ..ClaimsConfig::default()
        };
        let groups = ["acme/all", "root", "ops", "other", "acme/platform"];
        let claims = user_claims(&config, &user(), Some(&identity(&groups)));
        assert_eq!(claims.email.as_deref(), Some("ada@example.test"));
        assert_eq!(claims.email_verified, Some(true));
        assert_eq!(claims.username.as_deref(), Some("ada"));
        assert_eq!(
            claims.groups.unwrap(),
            ["acme/all", "ops", "acme/platform"],
            "in the provider's order, filtered"
        );
        assert_eq!(claims.groups_truncated, None);
        assert_eq!(
            claims.roles.unwrap(),
            ["admin", "viewer"],
            "root grants admin though filtered out"
        );
    }

    #[test]
    fn groups_are_capped_in_number_and_bytes() {
        let config = ClaimsConfig {
            groups: true,
            max_groups: 3,
            ..ClaimsConfig::default()
        };
        let claims = user_claims(&config, &user(), Some(&identity(&["a", "b", "c", "d"])));
        assert_eq!(claims.groups.unwrap(), ["a", "b", "c"]);
        assert_eq!(claims.groups_truncated, Some(true));
        let long: Vec<String> = (0..100)
            .map(|i| format!("{i:03}{}", "g".repeat(1021)))
            .collect();
        let long: Vec<&str> = long.iter().map(String::as_str).collect();
        let config = ClaimsConfig {
            groups: true,
            max_groups: 100,
            ..ClaimsConfig::default()
        };
        let claims = user_claims(&config, &user(), Some(&identity(&long)));
        let kept = claims.groups.unwrap();
        assert_eq!(kept.len(), 2, "3 KiB of 1 KiB names");
        assert!(serde_json::to_string(&kept).unwrap().len() <= MAX_GROUP_BYTES);
        // Escapes count: names of quotes take twice their length.
        let quotes = vec!["\"".repeat(1000); 3];
        let quotes: Vec<&str> = quotes.iter().map(String::as_str).collect();
        let claims = user_claims(&config, &user(), Some(&identity(&quotes)));
        assert_eq!(claims.groups.unwrap().len(), 1);
        assert_eq!(claims.groups_truncated, Some(true));
        // Without an identity (a session of the previous version): user facts only.
        let claims = user_claims(&config, &user(), None);
        assert_eq!(claims.groups.unwrap(), Vec::<String>::new());
    }
}
