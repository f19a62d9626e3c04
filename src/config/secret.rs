//! Secrets in the config: inline, from a file or from the environment, never shown.

/// A secret from the config: inline, from a file (`<key>_file`) or from the environment
/// (`<key>_env`). Its value never appears in `Debug` output or logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Reads `key`, `key_file` or `key_env` from `table` (exactly one of them), recording problems
/// under `section`. A secret file's trailing newline is dropped, as `echo x > file` leaves one.
pub fn read_secret(table: &toml::Table, section: &str, key: &str, problems: &mut Vec<String>) -> Option<Secret> {
    let name =
        |suffix: &str| if section.is_empty() { format!("{key}{suffix}") } else { format!("{section}.{key}{suffix}") };
    let given: Vec<(&str, &toml::Value)> = ["", "_file", "_env"]
        .into_iter()
        .filter_map(|suffix| table.get(&format!("{key}{suffix}")).map(|v| (suffix, v)))
        .collect();
    let (suffix, value) = match given.as_slice() {
        [] => return None,
        [one] => *one,
        _ => {
            problems.push(format!("{}: give only one of {key}, {key}_file, {key}_env", name("")));
            return None;
        }
    };
    let Some(text) = value.as_str() else {
        problems.push(format!("{}: must be a string", name(suffix)));
        return None;
    };
    let secret = match suffix {
        "" => Ok(text.to_owned()),
        "_file" => std::fs::read_to_string(text)
            .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
            .map_err(|e| format!("cannot read {text}: {e}")),
        _ => std::env::var(text).map_err(|_| format!("environment variable {text} is not set")),
    };
    match secret {
        Ok(s) if s.is_empty() => {
            problems.push(format!("{}: the secret is empty", name(suffix)));
            None
        }
        Ok(s) => Some(Secret(s)),
        Err(e) => {
            problems.push(format!("{}: {e}", name(suffix)));
            None
        }
    }
}
