//! Bounds on the profile a plugin maps, so a buggy or hostile plugin (or provider) cannot store
//! garbage.

use lanyard_provider_sdk::Profile;

use crate::error::Error;

/// Bounds on what a plugin's profile may hold, so a buggy or hostile plugin (or provider)
/// cannot store garbage: the subject and email are refused when unusable; display fields are
/// cut to length; an unusable picture and over-long group names are dropped, and groups
/// beyond the limit too (fewer groups can only mean less access).
const MAX_SUBJECT: usize = 255;
const MAX_EMAIL: usize = 254;
const MAX_DISPLAY: usize = 256;
const MAX_PICTURE: usize = 2048;
const MAX_GROUPS: usize = 10_000;
const MAX_GROUP: usize = 1024;

pub(super) fn checked_profile(mut profile: Profile, provider: &str) -> Result<Profile, Error> {
    let has_control = |s: &str| s.chars().any(char::is_control);
    if profile.subject.is_empty()
        || profile.subject.len() > MAX_SUBJECT
        || has_control(&profile.subject)
    {
        return Err(Error::provider(format!(
            "the provider's profile has no usable subject (1 to {MAX_SUBJECT} bytes, no \
             control characters)"
        )));
    }
    if let Some(email) = &profile.email {
        let plausible = email.len() <= MAX_EMAIL
            && !has_control(email)
            && !email.contains(char::is_whitespace)
            && email
                .split_once('@')
                .is_some_and(|(local, domain)| !local.is_empty() && !domain.is_empty());
        if !plausible {
            return Err(Error::provider(
                "the provider's profile has an email that is not one",
            ));
        }
    }
    for text in [&mut profile.name, &mut profile.username]
        .into_iter()
        .flatten()
    {
        text.retain(|c| !c.is_control());
        truncate(text, MAX_DISPLAY);
    }
    if let Some(picture) = &profile.picture {
        let usable = picture.len() <= MAX_PICTURE
            && url::Url::parse(picture).is_ok_and(|u| matches!(u.scheme(), "https" | "http"));
        if !usable {
            profile.picture = None;
        }
    }
    let before = profile.groups.len();
    profile
        .groups
        .retain(|g| !g.is_empty() && g.len() <= MAX_GROUP && !has_control(g));
    profile.groups.truncate(MAX_GROUPS);
    if profile.groups.len() != before {
        tracing::warn!(
            provider,
            given = before,
            kept = profile.groups.len(),
            "dropped empty, over-long or surplus groups from a profile"
        );
    }
    Ok(profile)
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
pub(super) fn truncate(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;

    fn profile() -> Profile {
        Profile {
            subject: "248289761001".into(),
            email: Some("jane@example.com".into()),
            name: Some("Jane".into()),
            ..Profile::default()
        }
    }

    #[test]
    fn unusable_subjects_and_emails_are_refused() {
        for subject in ["", "a\u{0}b", &"s".repeat(256)] {
            let p = Profile {
                subject: subject.into(),
                ..profile()
            };
            assert_eq!(
                checked_profile(p, "t").unwrap_err().code,
                ErrorCode::ProviderError
            );
        }
        for email in [
            "",
            "jane",
            "@example.com",
            "jane@",
            "ja ne@example.com",
            "jane@example.com\n",
            &format!("{}@example.com", "j".repeat(250)),
        ] {
            let p = Profile {
                email: Some(email.into()),
                ..profile()
            };
            assert!(checked_profile(p, "t").is_err(), "{email:?}");
        }
        assert_eq!(checked_profile(profile(), "t").unwrap(), profile());
    }

    #[test]
    fn display_fields_are_cut_and_bad_pictures_and_groups_dropped() {
        let p = Profile {
            name: Some(format!("{}\u{7}", "é".repeat(300))),
            username: Some("ok".into()),
            picture: Some("javascript:alert(1)".into()),
            groups: (0..MAX_GROUPS + 5)
                .map(|i| format!("g{i}"))
                .chain(["x".repeat(MAX_GROUP + 1), String::new()])
                .collect(),
            ..profile()
        };
        let p = checked_profile(p, "t").unwrap();
        let name = p.name.unwrap();
        assert!(name.len() <= MAX_DISPLAY && name.chars().all(|c| c == 'é'));
        assert_eq!(p.username.as_deref(), Some("ok"));
        assert_eq!(p.picture, None);
        assert_eq!(p.groups.len(), MAX_GROUPS);
        assert!(p
            .groups
            .iter()
            .all(|g| g.len() <= MAX_GROUP && !g.is_empty()));
        let p = Profile {
            picture: Some("https://example.com/a.png".into()),
            ..profile()
        };
        assert!(checked_profile(p, "t").unwrap().picture.is_some());
    }
}
