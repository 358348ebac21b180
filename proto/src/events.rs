//! The events: published on `{prefix}.events.{name}` after the durable write.

/// The subject an event named `name` (`user.logged_in`) is published on.
pub fn event_subject(prefix: &str, name: &str) -> String {
    format!("{prefix}.events.{name}")
}

/// `{prefix}.events.>`: every event (what the events stream captures).
pub fn all_events_subject(prefix: &str) -> String {
    format!("{prefix}.events.>")
}

/// The event name of a subject under `{prefix}.events.`, if it is one.
pub fn event_name<'a>(prefix: &str, subject: &'a str) -> Option<&'a str> {
    subject
        .strip_prefix(prefix)?
        .strip_prefix(".events.")
        .filter(|name| !name.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_subjects_round_trip() {
        let subject = event_subject("lanyard", "user.logged_in");
        assert_eq!(subject, "lanyard.events.user.logged_in");
        assert_eq!(event_name("lanyard", &subject), Some("user.logged_in"));
        assert_eq!(event_name("other", &subject), None);
        assert_eq!(event_name("lanyard", "lanyard.v1.login"), None);
        assert_eq!(all_events_subject("acme"), "acme.events.>");
    }
}
