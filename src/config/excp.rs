//! The `[excp]` section and its `[excp.conversation_provider]` table, named as in CME so an
//! operator can copy values over; the Genesys `.env` variables override them.

use std::path::PathBuf;
use std::time::Duration;

use super::{ApiListener, Outbound, Secret, Section, parse_duration};

#[derive(Debug, Clone)]
pub struct ExcpConfig {
    /// The ingest API's listener.
    pub api: ApiListener,
    /// Where interaction-ends go: the lb's exrp pool (or one exrp), without a path.
    pub recording_processor_url: String,
    /// Basic credentials for exrp's API (`recording_processor_username` / `_password`).
    pub recording_processor_auth: Option<(String, super::Secret)>,
    /// `recording_processor_ca_file`, `recording_processor_proxy`.
    pub recording_processor_outbound: Outbound,
    pub state_dir: PathBuf,
    /// A call with no new metadata for this long is ended (when no end event comes).
    pub quiet_period: Duration,
    /// Backoff of interaction-end deliveries: first delay and cap.
    pub retry_initial: Duration,
    pub retry_max: Duration,
    pub request_timeout: Duration,
    /// How long a delivered call is remembered, so repeated metadata is not sent again.
    pub delivered_retention: Duration,
    pub max_open_calls: usize,
    pub max_recordings_per_call: usize,
    /// The tenant named in interaction-ends when the metadata has none.
    pub tenant: String,
    pub fsync: bool,
    pub provider: ConversationProvider,
    /// GIR mode: the WebDAV store MCP records into, watched for new recordings.
    pub store: Option<StoreWatch>,
    /// `[excp.s3]`: call records kept in a bucket every instance reads, so another instance
    /// takes over the calls of one that died.
    pub shared: Option<SharedCalls>,
}

/// Calls kept in a bucket (`[excp.s3]`, with `[excp] instance` and `takeover_after`).
#[derive(Debug, Clone)]
pub struct SharedCalls {
    pub s3: super::S3Config,
    /// This instance's name: its records are under `<key_prefix>/<instance>/`.
    pub instance: String,
    /// An instance whose heartbeat is older than this (by the bucket's clock) is dead, and the
    /// first live instance by name takes its calls over.
    pub takeover_after: Duration,
}

/// `[excp.transient_storage]`, named as exrp's `recording-uploader.exec.transientStorage`.
#[derive(Debug, Clone)]
pub struct StoreWatch {
    /// The collection, e.g. "http://10.0.0.4/recordings".
    pub url: String,
    pub username: String,
    pub password: Secret,
    pub poll_interval: Duration,
    /// `ca_file`, `proxy`.
    pub outbound: Outbound,
}

/// CME annex folder `conversation_provider`.
#[derive(Debug, Clone)]
pub struct ConversationProvider {
    pub recording_enabled: bool,
    pub sta_default_programid: String,
    pub sta_default_language: String,
    pub gir: Option<GirConfig>,
}

/// GIR mode: metadata comes from RWS instead of MCP.
#[derive(Debug, Clone)]
pub struct GirConfig {
    /// `https://<gir_host>` or the `gir_url` override.
    pub base_url: String,
    pub org_id: String,
    pub user: String,
    pub password: Secret,
    pub fetch_delay: Duration,
    pub fetch_interval: Duration,
    pub fetch_duration: Duration,
    /// `gir_ca_file`, `gir_proxy`.
    pub outbound: Outbound,
}

/// Reads the Genesys `.env` overrides (EXCP_RECORDING_PROCESSOR_PROXY_HOST/PORT, EXCP_GIR_HOST).
pub type EnvLookup<'a> = &'a dyn Fn(&str) -> Option<String>;

impl ExcpConfig {
    pub(super) fn parse(table: &toml::Table, env: EnvLookup<'_>, problems: &mut Vec<String>) -> ExcpConfig {
        let mut s = Section::new("excp", table, problems);
        let api = ApiListener::parse(&mut s, 3650, 1 << 20);
        let provider_table = s.table("conversation_provider");
        let store_table = s.table("transient_storage");
        let s3_table = s.table("s3");
        let instance = s.string("instance");
        let takeover_after = s.duration("takeover_after", Duration::from_secs(60));
        let url = s.string("recording_processor_url");
        let rp_user = s.string("recording_processor_username");
        let rp_password = s.secret("recording_processor_password");
        let recording_processor_outbound = s.outbound("recording_processor_");
        let recording_processor_auth = match (rp_user, rp_password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                s.problem_at(
                    "recording_processor_username",
                    "give both recording_processor_username and recording_processor_password, or neither",
                );
                None
            }
        };
        let state_dir = s.path("state_dir");
        let quiet_period = s.duration("quiet_period", Duration::from_secs(120));
        let retry_initial = s.duration("retry_initial", Duration::from_secs(1));
        let retry_max = s.duration("retry_max", Duration::from_secs(300));
        let request_timeout = s.duration("request_timeout", Duration::from_secs(30));
        let delivered_retention = s.duration("delivered_retention", Duration::from_secs(24 * 3600));
        let max_open_calls = s.count("max_open_calls", 100_000, 1..=10_000_000);
        let max_recordings_per_call = s.count("max_recordings_per_call", 1000, 1..=100_000);
        let tenant = s.string("tenant").unwrap_or_else(|| "Environment".into());
        let fsync = s.bool("fsync", true);

        let url = match (env("EXCP_RECORDING_PROCESSOR_PROXY_HOST"), env("EXCP_RECORDING_PROCESSOR_PROXY_PORT")) {
            (Some(host), Some(port)) => Some(format!("http://{host}:{port}")),
            (Some(host), None) => Some(format!("http://{host}")),
            (None, Some(_)) => {
                s.problem_at(
                    "recording_processor_url",
                    "EXCP_RECORDING_PROCESSOR_PROXY_PORT is set without EXCP_RECORDING_PROCESSOR_PROXY_HOST",
                );
                url
            }
            (None, None) => url,
        };
        let recording_processor_url = match url {
            None => {
                s.problem_at(
                    "recording_processor_url",
                    "is required: the lb's exrp pool, e.g. \"http://10.0.0.5:8080\" \
                     (or EXCP_RECORDING_PROCESSOR_PROXY_HOST/PORT)",
                );
                String::new()
            }
            Some(u) => match check_http_base(&u) {
                Ok(u) => u,
                Err(e) => {
                    s.problem_at("recording_processor_url", e);
                    String::new()
                }
            },
        };
        if state_dir.is_none() {
            s.problem_at("state_dir", "is required: where accepted metadata is kept until it is delivered");
        }
        for (key, value) in [
            ("quiet_period", quiet_period),
            ("retry_initial", retry_initial),
            ("retry_max", retry_max),
            ("request_timeout", request_timeout),
        ] {
            if value.is_zero() {
                s.problem_at(key, "must be more than zero");
            }
        }
        if retry_max < retry_initial {
            s.problem_at("retry_max", "must not be below retry_initial");
        }
        // The heartbeat's time is the bucket's Last-Modified, to the second.
        if takeover_after < Duration::from_secs(5) {
            s.problem_at("takeover_after", "must be at least 5s (heartbeats are timed to the second)");
        }
        if let Some(name) = &instance
            && !crate::durable::valid_key(&name.replace(':', "_"))
        {
            s.problem_at("instance", format!("{name:?}: letters, digits, '-', '_', '.' and ':' only"));
        }
        let shared = s3_table.and_then(|t| {
            let name = s.key_name("s3");
            let mut sub = Section::new(name, t, &mut *s.problems);
            let s3 = super::S3Config::parse(&mut sub, "excp");
            sub.finish();
            let instance = instance.clone().unwrap_or_else(|| super::exrp::default_instance(api.listen));
            Some(SharedCalls { s3: s3?, instance, takeover_after })
        });
        if shared.is_none() && s3_table.is_none() && instance.is_some() {
            s.problem_at("instance", "only used with [excp.s3] (calls kept in a shared bucket)");
        }
        s.finish();

        let empty = toml::Table::new();
        let provider = ConversationProvider::parse(provider_table.unwrap_or(&empty), env, problems);
        let store = store_table.and_then(|t| StoreWatch::parse(t, problems));
        if store_table.is_some() && provider.gir.is_none() {
            problems.push(
                "excp.transient_storage: only used in GIR mode (set conversation_provider.gir_host or gir_url)".into(),
            );
        }
        ExcpConfig {
            api,
            recording_processor_url,
            recording_processor_outbound,
            recording_processor_auth,
            state_dir: state_dir.unwrap_or_default(),
            quiet_period,
            retry_initial,
            retry_max,
            request_timeout,
            delivered_retention,
            max_open_calls,
            max_recordings_per_call,
            tenant,
            fsync,
            provider,
            store,
            shared,
        }
    }
}

impl StoreWatch {
    fn parse(table: &toml::Table, problems: &mut Vec<String>) -> Option<StoreWatch> {
        let mut s = Section::new("excp.transient_storage", table, problems);
        let access = s.store_access(true);
        let poll_interval = s.duration("poll_interval", Duration::from_secs(10));
        if poll_interval < Duration::from_millis(100) {
            s.problem_at("poll_interval", "must be at least 100ms");
        }
        let outbound = s.outbound("");
        s.finish();
        let (url, username, password) = access?;
        Some(StoreWatch { url, username, password, poll_interval, outbound })
    }
}

/// "http(s)://host:port" (a trailing slash is dropped).
fn check_http_base(url: &str) -> Result<String, String> {
    let trimmed = url.trim_end_matches('/');
    let uri: http::Uri = trimmed.parse().map_err(|_| format!("{url:?} is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https")) {
        return Err(format!("{url:?}: only http:// and https:// URLs are supported here"));
    }
    if uri.authority().is_none() {
        return Err(format!("{url:?} has no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/" && !p.as_str().is_empty()) {
        return Err(format!("{url:?}: give the base URL only; the path /api/v1/interaction-end is added"));
    }
    Ok(trimmed.to_string())
}

impl ConversationProvider {
    fn parse(table: &toml::Table, env: EnvLookup<'_>, problems: &mut Vec<String>) -> ConversationProvider {
        let mut s = Section::new("excp.conversation_provider", table, problems);
        // CME's default is False; here excp exists to carry recordings, so it is on unless said.
        let recording_enabled = s.bool("recording_enabled", true);
        let sta_default_programid = s.string("sta_default_programid").unwrap_or_default();
        let sta_default_language = s.string("sta_default_language").unwrap_or_else(|| "en-US".into());
        let gir_host = env("EXCP_GIR_HOST").or_else(|| s.string("gir_host"));
        let gir_url = s.string("gir_url");
        let org_id = s.string("gir_orgId");
        let user = s.string("gir_user");
        // CME keeps bare numbers in minutes.
        let minutes = |s: &mut Section<'_, '_>, key: &str, default: u64| -> Duration {
            match s.get(key) {
                None => Duration::from_secs(default * 60),
                Some(toml::Value::Integer(n)) if *n >= 0 => Duration::from_secs(*n as u64 * 60),
                Some(toml::Value::String(t)) => match parse_duration(t, Duration::from_secs(60)) {
                    Ok(d) => d,
                    Err(e) => {
                        s.problem_at(key, e);
                        Duration::from_secs(default * 60)
                    }
                },
                Some(other) => {
                    s.problem_at(key, format!("must be minutes or a duration like \"10m\", not {}", other.type_str()));
                    Duration::from_secs(default * 60)
                }
            }
        };
        let fetch_delay = minutes(&mut s, "gir_metadata_fetch_delay", 10);
        let fetch_interval = minutes(&mut s, "gir_metadata_fetch_interval", 1380);
        let fetch_duration = minutes(&mut s, "gir_metadata_fetch_duration", 1440);
        let password = s.secret("gir_password");
        let outbound = s.outbound("gir_");
        if !sta_default_language.is_empty() && !valid_language(&sta_default_language) {
            s.problem_at("sta_default_language", format!("{sta_default_language:?} is not like \"en-US\""));
        }
        let base_url = match (gir_url, gir_host) {
            (Some(u), _) => Some(u.trim_end_matches('/').to_string()),
            (None, Some(h)) => Some(format!("https://{h}")),
            (None, None) => None,
        };
        let gir = match base_url {
            None => None,
            Some(base_url) => {
                let mut missing = Vec::new();
                if org_id.is_none() {
                    missing.push("gir_orgId");
                }
                if user.is_none() {
                    missing.push("gir_user");
                }
                if password.is_none() {
                    missing.push("gir_password");
                }
                if base_url.parse::<http::Uri>().is_err() {
                    s.problem_at("gir_url", format!("{base_url:?} is not a URL"));
                }
                if !missing.is_empty() {
                    s.problem_at("gir_host", format!("GIR mode also needs {}", missing.join(", ")));
                    None
                } else {
                    Some(GirConfig {
                        base_url,
                        org_id: org_id.unwrap_or_default(),
                        user: user.unwrap_or_default(),
                        password: password.unwrap_or_else(|| Secret::new("")),
                        fetch_delay,
                        fetch_interval,
                        fetch_duration,
                        outbound,
                    })
                }
            }
        };
        s.finish();
        ConversationProvider { recording_enabled, sta_default_programid, sta_default_language, gir }
    }
}

/// ISO 639-1 language, '-', ISO 3166-1 alpha-2 country ("en-US").
fn valid_language(tag: &str) -> bool {
    let b = tag.as_bytes();
    b.len() == 5
        && b[..2].iter().all(u8::is_ascii_lowercase)
        && b[2] == b'-'
        && b[3..].iter().all(u8::is_ascii_uppercase)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, env: &[(&str, &str)]) -> Result<ExcpConfig, Vec<String>> {
        let table: toml::Table = text.parse().unwrap();
        let lookup = |k: &str| env.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string());
        let mut problems = Vec::new();
        let c = ExcpConfig::parse(&table, &lookup, &mut problems);
        if problems.is_empty() { Ok(c) } else { Err(problems) }
    }

    #[test]
    fn design_sample_parses_with_defaults() {
        let c = parse(
            r#"listen = "0.0.0.0:3650"
               recording_processor_url = "http://10.0.0.5:8080/"
               state_dir = "/var/lib/exec-allinone/excp"
               [conversation_provider]
               recording_enabled = true
               sta_default_programid = ""
               sta_default_language = "en-US""#,
            &[],
        )
        .unwrap();
        assert_eq!(c.recording_processor_url, "http://10.0.0.5:8080");
        assert_eq!(c.quiet_period, Duration::from_secs(120));
        assert!(c.provider.recording_enabled);
        assert!(c.provider.gir.is_none());
    }

    #[test]
    fn env_overrides_and_gir_minutes() {
        let c = parse(
            r#"state_dir = "/tmp/x"
               recording_processor_url = "http://ignored:1"
               [conversation_provider]
               gir_orgId = "cc1"
               gir_user = "ops"
               gir_password = "pw"
               gir_metadata_fetch_delay = 2
               gir_metadata_fetch_interval = "3s""#,
            &[
                ("EXCP_RECORDING_PROCESSOR_PROXY_HOST", "10.1.1.1"),
                ("EXCP_RECORDING_PROCESSOR_PROXY_PORT", "8080"),
                ("EXCP_GIR_HOST", "rws.example:8443"),
            ],
        )
        .unwrap();
        assert_eq!(c.recording_processor_url, "http://10.1.1.1:8080");
        let gir = c.provider.gir.unwrap();
        assert_eq!(gir.base_url, "https://rws.example:8443");
        assert_eq!(gir.fetch_delay, Duration::from_secs(120));
        assert_eq!(gir.fetch_interval, Duration::from_secs(3));
        assert_eq!(gir.fetch_duration, Duration::from_secs(1440 * 60));
    }

    #[test]
    fn transient_storage_is_for_gir_mode_and_needs_credentials() {
        let p = parse(
            r#"state_dir = "/tmp/x"
               recording_processor_url = "http://e:1"
               [transient_storage]
               url = "ftp://store"
               poll_interval = "1ms""#,
            &[],
        )
        .unwrap_err()
        .join("\n");
        for needle in [
            "transient_storage.url",
            "username: is required",
            "password: is required",
            "poll_interval",
            "only used in GIR mode",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in\n{p}");
        }
    }

    #[test]
    fn every_problem_is_listed() {
        let p = parse(
            r#"recording_processor_url = "ftp://x/y"
               quiet_period = "0s"
               typo = 1
               [conversation_provider]
               gir_host = "rws"
               sta_default_language = "english""#,
            &[],
        )
        .unwrap_err()
        .join("\n");
        for needle in [
            "excp.recording_processor_url",
            "excp.state_dir: is required",
            "excp.quiet_period: must be more than zero",
            "excp.typo: unknown key",
            "GIR mode also needs gir_orgId, gir_user, gir_password",
            "sta_default_language",
        ] {
            assert!(p.contains(needle), "missing {needle:?} in\n{p}");
        }
    }
}
