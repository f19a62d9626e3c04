//! `exec-allinone import-env FILE`: reads a Genesys EXEC `.env` (the file `bootstrap.py` turns
//! into docker-compose files) and prints the matching TOML: the lb's exrp pool from
//! `EXRP_VM_HOST_LIST`/`EXRP_PORT`, excp's `recording_processor_url` from
//! `EXCP_RECORDING_PROCESSOR_PROXY_HOST/PORT`, GIR's host, exrp's port. What the `.env` does not
//! hold (the WebDAV store and Genesys Cloud credentials live in CME) is printed as values to
//! fill in, and said in the notes.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// The TOML and what the operator should know about it.
#[derive(Debug)]
pub struct Imported {
    pub toml: String,
    pub notes: Vec<String>,
}

/// `KEY=value` lines; `#` comments, blank lines, `export ` and quotes allowed.
pub fn parse_env(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut vars = BTreeMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            return Err(format!("line {}: not KEY=value: {raw:?}", i + 1));
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("line {}: {key:?} is not a variable name", i + 1));
        }
        let value = value.trim();
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        vars.insert(key.to_string(), value.to_string());
    }
    Ok(vars)
}

fn quote(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub fn translate(text: &str) -> Result<Imported, String> {
    let vars = parse_env(text)?;
    let get = |k: &str| vars.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let port = |k: &str, default: u16| -> Result<u16, String> {
        match get(k) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| format!("{k}={v:?} is not a port number")),
        }
    };
    let mut notes = Vec::new();
    let mut out = String::from(
        "# Made by `exec-allinone import-env` from a Genesys EXEC .env; check it with\n# `exec-allinone check-config --config FILE`. Each VM keeps the sections of the roles it runs.\n",
    );
    let exrp_port = port("EXRP_PORT", 8080)?;
    let lb_exrp_port = match get("HTTP_LB_EXRP_PORT") {
        Some(_) => port("HTTP_LB_EXRP_PORT", 8080)?,
        None => port("EXCP_RECORDING_PROCESSOR_PROXY_PORT", 8080)?,
    };
    let lb_excp_port = port("HTTP_LB_EXCP_PORT", 3650)?;

    let hosts = |k: &str| -> Vec<String> {
        get(k).map(|v| v.split([',', ' ']).filter(|h| !h.is_empty()).map(str::to_string).collect()).unwrap_or_default()
    };
    let exrp_hosts = hosts("EXRP_VM_HOST_LIST");
    if exrp_hosts.is_empty() {
        notes.push("EXRP_VM_HOST_LIST is not set: [lb.pools.exrp] is left out".into());
    } else {
        let servers: Vec<String> = exrp_hosts.iter().map(|h| quote(&format!("{h}:{exrp_port}"))).collect();
        let _ = write!(
            out,
            "\n[lb.pools.exrp]                 # excp sends interaction-ends here\nlisten = {}\nservers = [{}]\nnext_upstream_tries = 3\n",
            quote(&format!("0.0.0.0:{lb_exrp_port}")),
            servers.join(", ")
        );
    }
    let excp_hosts = hosts("EXCP_VM_HOST_LIST");
    if excp_hosts.is_empty() {
        notes.push(
            "the .env names no excp hosts (EXCP_VM_HOST_LIST): add [lb.pools.excp] with their addresses \
             (MCP's recordingclient.callrec_dest points at it)"
                .into(),
        );
    } else {
        let servers: Vec<String> = excp_hosts.iter().map(|h| quote(&format!("{h}:3650"))).collect();
        let _ = write!(
            out,
            "\n[lb.pools.excp]                 # MCP posts recording metadata here\nlisten = {}\nservers = [{}]\nnext_upstream_tries = 3\n",
            quote(&format!("0.0.0.0:{lb_excp_port}")),
            servers.join(", ")
        );
    }

    match get("EXCP_RECORDING_PROCESSOR_PROXY_HOST") {
        Some(host) => {
            let url = format!("http://{host}:{}", port("EXCP_RECORDING_PROCESSOR_PROXY_PORT", 8080)?);
            let _ = write!(
                out,
                "\n[excp]\nlisten = \"0.0.0.0:3650\"\nrecording_processor_url = {}\nstate_dir = \"/var/lib/exec-allinone/excp\"\n",
                quote(&url)
            );
            if let Some(gir) = get("EXCP_GIR_HOST") {
                let _ = write!(
                    out,
                    "\n[excp.conversation_provider]    # the CME annex folder of the same name\ngir_host = {}\n\
                     gir_orgId = \"FILL-IN\"          # from CME, as the rest of this folder\ngir_user = \"FILL-IN\"\ngir_password = \"FILL-IN\"\n\
                     \n[excp.transient_storage]        # GIR mode: calls and their file names come from the store\n\
                     type = \"WebDAV\"\nurl = \"http://FILL-IN/recordings\"   # as [exrp.transient_storage]\n\
                     username = \"FILL-IN\"\npassword = \"FILL-IN\"\n",
                    quote(gir)
                );
                notes.push(
                    "GIR mode: fill in gir_orgId, gir_user and gir_password from CME, and [excp.transient_storage] \
                     (the store MCP records into: excp learns calls and their file names from it)"
                        .into(),
                );
            }
        }
        None => notes.push("EXCP_RECORDING_PROCESSOR_PROXY_HOST is not set: [excp] is left out".into()),
    }

    let _ = write!(
        out,
        "\n[exrp]\nlisten = {}\nstate_dir = \"/var/lib/exec-allinone/exrp\"\n\n\
         [exrp.transient_storage]        # CME recording-uploader.exec.transientStorage\ntype = \"WebDAV\"\n\
         url = \"http://FILL-IN/recordings\"\nusername = \"FILL-IN\"\npassword = \"FILL-IN\"\n\n\
         [exrp.genesys_cloud]            # CME recording-uploader.exec.genesysCloud\nregion = \"mypurecloud.com\"\n\
         client_id = \"FILL-IN\"\nclient_secret = \"FILL-IN\"\n",
        quote(&format!("0.0.0.0:{exrp_port}"))
    );
    notes.push(
        "the WebDAV store and the Genesys Cloud client live in CME, not the .env: fill in [exrp.transient_storage] \
         and [exrp.genesys_cloud] (region, client_id, client_secret)"
            .into(),
    );
    if let Some(level) = get("EXRP_LOG_LEVEL") {
        notes.push(format!("EXRP_LOG_LEVEL={level} is read from the environment at start; keep it there"));
    }
    let used = [
        "EXRP_PORT",
        "EXRP_VM_HOST_LIST",
        "EXCP_VM_HOST_LIST",
        "HTTP_LB_EXRP_PORT",
        "HTTP_LB_EXCP_PORT",
        "EXCP_RECORDING_PROCESSOR_PROXY_HOST",
        "EXCP_RECORDING_PROCESSOR_PROXY_PORT",
        "EXCP_GIR_HOST",
        "EXRP_LOG_LEVEL",
    ];
    let ignored: Vec<&str> = vars.keys().map(String::as_str).filter(|k| !used.contains(k)).collect();
    if !ignored.is_empty() {
        notes.push(format!(
            "not used (container tags, Configuration Server login and others exec-allinone has no use for): {}",
            ignored.join(", ")
        ));
    }
    Ok(Imported { toml: out, notes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const ENV: &str = "# RecDep sample\nEXCP_RECORDING_PROCESSOR_PROXY_HOST=10.0.0.5\nEXCP_RECORDING_PROCESSOR_PROXY_PORT=8080\n\
                       export EXRP_VM_HOST_LIST=\"10.0.0.21,10.0.0.22\"\nEXRP_PORT=8080\nEXRP_TAG=100.0.100.12\n\
                       EXRP_LOG_LEVEL=debug\nEXCP_GIR_HOST=rws.example.com\nEXRP_CONFIG_SERVER_USER=default\n";

    #[test]
    fn a_recdep_env_becomes_a_config_that_parses() {
        let t = translate(ENV).unwrap();
        assert!(t.toml.contains("servers = [\"10.0.0.21:8080\", \"10.0.0.22:8080\"]"), "{}", t.toml);
        assert!(t.toml.contains("recording_processor_url = \"http://10.0.0.5:8080\""));
        assert!(t.toml.contains("gir_host = \"rws.example.com\""));
        // As written it is refused, each placeholder named; filled in, it parses.
        let mut problems = Vec::new();
        for role in [crate::cli::Role::Excp, crate::cli::Role::Exrp] {
            let err = crate::config::Config::from_toml_str_env(&t.toml, role, &|_| None).unwrap_err();
            assert!(err.problems.iter().all(|p| p.contains("from import-env")), "{err}");
            problems.extend(err.problems);
        }
        let err = crate::config::ConfigError { problems };
        for key in [
            "excp.conversation_provider.gir_orgId",
            "excp.transient_storage.url",
            "excp.transient_storage.password",
            "exrp.genesys_cloud.client_secret",
        ] {
            assert!(err.problems.iter().any(|p| p.starts_with(&format!("{key}:"))), "{key} in {err}");
        }
        let filled = t.toml.replace("FILL-IN", "filled");
        for role in [crate::cli::Role::Lb, crate::cli::Role::Excp, crate::cli::Role::Exrp] {
            if let Err(e) = crate::config::Config::from_toml_str_env(&filled, role, &|_| None) {
                panic!("{role:?}: {e}\n{filled}");
            }
        }
        let excp = crate::config::Config::from_toml_str_env(&filled, crate::cli::Role::Excp, &|_| None).unwrap();
        assert!(excp.excp.unwrap().store.is_some(), "GIR mode comes with its store watch");
        let notes = t.notes.join("\n");
        for needle in ["EXCP_VM_HOST_LIST", "EXRP_TAG", "EXRP_CONFIG_SERVER_USER", "FILL", "transient_storage"] {
            assert!(notes.contains(needle) || t.toml.contains(needle), "{needle} in {notes}");
        }
    }

    #[test]
    fn bad_lines_and_ports_are_refused() {
        assert!(translate("JUST A LINE\n").unwrap_err().contains("line 1"));
        assert!(translate("EXRP_PORT=http\n").unwrap_err().contains("EXRP_PORT"));
        assert!(translate("BAD-NAME=1\n").unwrap_err().contains("not a variable name"));
    }
}
