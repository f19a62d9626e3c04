//! The pools as `[lb]` TOML.

use super::*;

pub(super) fn render(file: &str, pools: &[Pool], worker_connections: Option<usize>) -> String {
    let mut out = format!("# Translated by exec-allinone import-nginx from {}\n", file.escape_debug());
    // A value several pools share goes to `[lb]` once; a lone pool keeps its own so adding pools later is safe.
    let shared: Vec<Option<&String>> = KEYS
        .iter()
        .map(|k| {
            let v = pools.get(1).and(pools.first())?.vals.get(k)?;
            pools.iter().all(|p| p.vals.get(k) == Some(v)).then_some(v)
        })
        .collect();
    if shared.iter().any(Option::is_some) || worker_connections.is_some() {
        out.push_str("\n[lb]\n");
        if let Some(n) = worker_connections {
            out.push_str(&format!("worker_connections = {n}\n"));
        }
        for (k, v) in KEYS.iter().zip(&shared) {
            if let Some(v) = v {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    for p in pools {
        out.push_str(&format!("\n[lb.pools.{}]\nlisten = {}\n", key(&p.name), q(&p.listen.to_string())));
        if p.servers.iter().all(|s| s.starts_with('"')) {
            out.push_str(&format!("servers = [{}]\n", p.servers.join(", ")));
        } else {
            out.push_str(&format!("servers = [\n    {},\n]\n", p.servers.join(",\n    ")));
        }
        for (k, s) in KEYS.iter().zip(&shared) {
            if let (Some(v), None) = (p.vals.get(k), s) {
                out.push_str(&format!("{k} = {v}\n"));
            }
        }
    }
    out
}
