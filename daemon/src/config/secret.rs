//! Where a secret in the configuration comes from, written once for every secret: a value in
//! the file (or a `LANYARD_` variable), a file of its own, or an environment variable the
//! operator names. At most one may be set.

use std::path::Path;

use secrecy::SecretString;

use super::ConfigError;

/// One secret's possible sources. `key` is the value's key as messages name it
/// (`providers[0].client_secret`); the other sources' keys are `{key}_file` and `{key}_env`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SecretSource<'a> {
    pub key: &'a str,
    pub value: Option<&'a SecretString>,
    pub file: Option<&'a Path>,
    /// Whether this secret may come from an environment variable, and which one is set.
    pub env: Option<Option<&'a str>>,
}

impl<'a> SecretSource<'a> {
    /// A secret that may be a value or a file.
    pub(crate) fn new(
        key: &'a str,
        value: Option<&'a SecretString>,
        file: Option<&'a Path>,
    ) -> Self {
        Self {
            key,
            value,
            file,
            env: None,
        }
    }

    /// The secret, if any source is set. Two sources set is an error naming the key, as is
    /// a file that cannot be read or a variable that is not set.
    pub(crate) fn resolve(&self) -> Result<Option<SecretString>, ConfigError> {
        let env = self.env.flatten();
        let set = [self.value.is_some(), self.file.is_some(), env.is_some()];
        if set.iter().filter(|s| **s).count() > 1 {
            return Err(ConfigError::at(
                self.key,
                format!("set only one of {}", self.names().join(", ")),
            ));
        }
        if let Some(value) = self.value {
            return Ok(Some(value.clone()));
        }
        if let Some(path) = self.file {
            return read_secret_file(path).map(Some).map_err(|e| {
                ConfigError::at(
                    self.file_key(),
                    format!("cannot read {}: {e}", path.display()),
                )
            });
        }
        if let Some(var) = env {
            return std::env::var(var)
                .map(|v| Some(SecretString::from(v)))
                .map_err(|_| {
                    ConfigError::at(format!("{}_env", self.key), format!("${var} is not set"))
                });
        }
        Ok(None)
    }

    /// The secret, which must be set.
    pub(crate) fn require(&self) -> Result<SecretString, ConfigError> {
        self.resolve()?.ok_or_else(|| {
            ConfigError::at(self.key, format!("set one of {}", self.names().join(", ")))
        })
    }

    fn file_key(&self) -> String {
        format!("{}_file", self.key)
    }

    /// The sources' keys, without their section (`token`, `token_file`), for messages.
    fn names(&self) -> Vec<String> {
        let short = |key: &str| key.rsplit('.').next().unwrap_or(key).to_owned();
        let mut names = vec![short(self.key)];
        names.push(short(&self.file_key()));
        if self.env.is_some() {
            names.push(format!("{}_env", short(self.key)));
        }
        names
    }
}

/// Reads a secret from a file, trimming the trailing newline editors add.
pub(crate) fn read_secret_file(path: &Path) -> std::io::Result<SecretString> {
    std::fs::read_to_string(path)
        .map(|s| SecretString::from(s.trim_end_matches(['\n', '\r']).to_owned()))
}

#[cfg(test)]
mod tests {
    use secrecy::ExposeSecret;

    use super::*;

    #[test]
    fn one_source_at_most_and_each_error_names_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, "from-file\r\n").unwrap();
        let value = SecretString::from("from-value");
        let source = |value, file, env| SecretSource {
            env: Some(env),
            ..SecretSource::new("providers[0].client_secret", value, file)
        };
        let got = |s: SecretSource<'_>| s.resolve().unwrap().map(|s| s.expose_secret().to_owned());
        assert_eq!(
            got(source(Some(&value), None, None)).as_deref(),
            Some("from-value")
        );
        assert_eq!(
            got(source(None, Some(&file), None)).as_deref(),
            Some("from-file")
        );
        assert_eq!(got(source(None, None, None)), None);
        let both = source(Some(&value), Some(&file), None)
            .resolve()
            .unwrap_err();
        assert_eq!(
            both.to_string(),
            "configuration error: `providers[0].client_secret`: set only one of client_secret, \
             client_secret_file, client_secret_env"
        );
        let nowhere = dir.path().join("nope");
        let missing = source(None, Some(&nowhere), None).resolve().unwrap_err();
        assert!(missing
            .to_string()
            .contains("`providers[0].client_secret_file`: cannot read"));
        let unset = source(None, None, Some("LANYARD_TEST_NEVER_SET_VARIABLE"));
        assert!(unset.resolve().unwrap_err().to_string().contains(
            "`providers[0].client_secret_env`: $LANYARD_TEST_NEVER_SET_VARIABLE is not set"
        ));
        let required = SecretSource::new("callers[1].token", None, None)
            .require()
            .unwrap_err();
        assert_eq!(
            required.to_string(),
            "configuration error: `callers[1].token`: set one of token, token_file"
        );
    }
}
