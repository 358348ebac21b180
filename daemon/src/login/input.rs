//! A callback request, normalised from its three accepted shapes (`state` with `code` or
//! `error`, the raw `query`, or a form body), with every field bounded.

use lanyard_proto::CallbackRequest;

use crate::error::Error;
use crate::service::check_len;

/// What a callback got to before it failed.
#[derive(Debug)]
pub(super) struct Seen {
    /// The login's provider, once known, for `login.failed`.
    pub(super) provider: Option<String>,
    /// Whether a pending login of the previous version was consumed (its removal must be
    /// made durable).
    pub(super) taken: bool,
    /// Whether this callback spent its state (so its outcome is the login's, whatever it
    /// is; a callback refused before that tells nothing about the login).
    pub(super) spent: bool,
}

/// A callback request, normalised from its three accepted shapes.
#[derive(Debug)]
pub(super) struct CallbackInput {
    pub(super) state: String,
    /// The browser binding the service kept for this login (its cookie).
    pub(super) binding: Option<String>,
    pub(super) code: Option<String>,
    pub(super) error: Option<String>,
    pub(super) error_description: Option<String>,
    pub(super) iss: Option<String>,
    pub(super) expected_provider: Option<String>,
    pub(super) expected_redirect_uri: Option<String>,
    /// The query's (or form body's) other parameters, for the provider plugin.
    pub(super) params: std::collections::BTreeMap<String, String>,
    /// The service's label for the client, kept on the session.
    pub(super) client: Option<String>,
}

/// The longest `client` label, in characters.
pub(super) const MAX_CLIENT_LABEL: usize = 64;

/// At most this many extra callback parameters reach the plugin, each at most this long.
pub(super) const MAX_CALLBACK_PARAMS: usize = 16;
pub(super) const MAX_CALLBACK_PARAM_BYTES: usize = 4096;

impl CallbackInput {
    pub(super) fn parse(request: CallbackRequest) -> Result<Self, Error> {
        let mut r = request;
        let mut params = std::collections::BTreeMap::new();
        if let Some(query) = r.query.take() {
            if r.state.is_some() || r.code.is_some() || r.error.is_some() || r.iss.is_some() {
                return Err(Error::bad_request(
                    "send either `query` or `state` with `code`/`error`, not both",
                ));
            }
            let query = query.strip_prefix('?').unwrap_or(&query);
            for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
                let slot = match key.as_ref() {
                    "state" => &mut r.state,
                    "code" => &mut r.code,
                    "error" => &mut r.error,
                    "error_description" => &mut r.error_description,
                    "iss" => &mut r.iss,
                    _ => {
                        if params.len() >= MAX_CALLBACK_PARAMS
                            || value.len() > MAX_CALLBACK_PARAM_BYTES
                            || key.len() > 64
                        {
                            return Err(Error::bad_request(
                                "the callback carries too many or too large parameters",
                            ));
                        }
                        if params
                            .insert(key.into_owned(), value.into_owned())
                            .is_some()
                        {
                            return Err(Error::bad_request("a parameter appears twice in query"));
                        }
                        continue;
                    }
                };
                if slot.is_some() {
                    return Err(Error::bad_request(format!(
                        "`{key}` appears twice in query"
                    )));
                }
                *slot = Some(value.into_owned());
            }
        }
        for (name, value) in [
            ("state", &r.state),
            ("code", &r.code),
            ("error", &r.error),
            ("iss", &r.iss),
            ("provider", &r.provider),
            ("redirect_uri", &r.redirect_uri),
            ("binding", &r.binding),
        ] {
            check_len(name, value.as_ref())?;
        }
        let state = r
            .state
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::bad_request("`state` is required"))?;
        if r.code.is_none() && r.error.is_none() {
            return Err(Error::bad_request("`code` or `error` is required"));
        }
        if r.code.is_some() && r.error.is_some() {
            return Err(Error::bad_request("send `code` or `error`, not both"));
        }
        check_client_label(r.client.as_deref())?;
        Ok(Self {
            state,
            binding: r.binding,
            code: r.code,
            error: r.error,
            error_description: r.error_description,
            iss: r.iss,
            expected_provider: r.provider,
            expected_redirect_uri: r.redirect_uri,
            params,
            client: r.client.filter(|c| !c.is_empty()),
        })
    }
}

/// A `client` label: at most [`MAX_CLIENT_LABEL`] characters, none of them control ones.
pub(super) fn check_client_label(client: Option<&str>) -> Result<(), Error> {
    match client {
        Some(c) if c.chars().count() > MAX_CLIENT_LABEL || c.chars().any(char::is_control) => {
            Err(Error::bad_request(format!(
                "`client` must be at most {MAX_CLIENT_LABEL} characters, without control \
                 characters"
            )))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(q: &str) -> Result<CallbackInput, Error> {
        CallbackInput::parse(CallbackRequest {
            query: Some(q.into()),
            ..CallbackRequest::default()
        })
    }

    #[test]
    fn a_query_is_split_into_the_callback_and_the_plugins_parameters() {
        let input = query("?state=s1&code=c%2B1&iss=https%3A%2F%2Fidp&user=%7B%7D").unwrap();
        assert_eq!(input.state, "s1");
        assert_eq!(input.code.as_deref(), Some("c+1"));
        assert_eq!(input.iss.as_deref(), Some("https://idp"));
        assert_eq!(input.params.get("user").map(String::as_str), Some("{}"));
        let refused = query("state=s1&error=access_denied&error_description=no").unwrap();
        assert_eq!(refused.error.as_deref(), Some("access_denied"));
    }

    #[test]
    fn malformed_callbacks_are_bad_requests() {
        let bad = |result: Result<CallbackInput, Error>| {
            result.map(|_| ()).unwrap_err().code == crate::error::ErrorCode::BadRequest
        };
        assert!(bad(query("code=c")), "no state");
        assert!(bad(query("state=s")), "neither code nor error");
        assert!(bad(query("state=s&code=c&error=e")), "both code and error");
        assert!(bad(query("state=s&state=t&code=c")), "a key twice");
        let many: String = (0..=MAX_CALLBACK_PARAMS)
            .map(|i| format!("&p{i}=x"))
            .collect();
        assert!(
            bad(query(&format!("state=s&code=c{many}"))),
            "too many params"
        );
        let both = CallbackInput::parse(CallbackRequest {
            query: Some("state=s&code=c".into()),
            state: Some("s".into()),
            ..CallbackRequest::default()
        });
        assert!(bad(both), "query and fields at once");
        let label = |client: &str| {
            CallbackInput::parse(CallbackRequest {
                query: Some("state=s&code=c".into()),
                client: Some(client.into()),
                ..CallbackRequest::default()
            })
        };
        assert!(
            bad(label(&"é".repeat(MAX_CLIENT_LABEL + 1))),
            "a long label"
        );
        assert!(bad(label("a\nb")), "a control character");
        let ok = label(&"é".repeat(MAX_CLIENT_LABEL)).unwrap();
        assert_eq!(ok.client.map(|c| c.chars().count()), Some(MAX_CLIENT_LABEL));
    }
}
