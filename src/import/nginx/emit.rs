//! The pools as `[lb]` TOML, written by the `toml` crate: `[lb]` with the settings every pool
//! shares, then each pool in the nginx file's order, its keys in `key::POOL`'s order.

use serde::ser::{Serialize, SerializeMap, Serializer};

use super::*;

/// A TOML table that keeps its keys in the order they were added (`toml::Table` sorts them).
#[derive(Default)]
struct Ordered<'a>(Vec<(&'a str, Item<'a>)>);

enum Item<'a> {
    Value(&'a Value),
    Owned(Value),
    Table(Ordered<'a>),
}

impl Serialize for Ordered<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            match v {
                Item::Value(v) => map.serialize_entry(k, v)?,
                Item::Owned(v) => map.serialize_entry(k, v)?,
                Item::Table(t) => map.serialize_entry(k, t)?,
            }
        }
        map.end()
    }
}

pub(super) fn render(file: &str, pools: &[Pool], worker_connections: Option<usize>) -> Result<String, String> {
    // A value several pools share goes to `[lb]` once; a lone pool keeps its own so adding pools later is safe.
    let shared = |k: &str| -> Option<&Value> {
        let v = pools.get(1).and(pools.first())?.vals.get(k)?;
        pools.iter().all(|p| p.vals.get(k) == Some(v)).then_some(v)
    };
    let mut lb = Ordered::default();
    if let Some(n) = worker_connections {
        lb.0.push((key::WORKER_CONNECTIONS, Item::Owned(Value::Integer(n.try_into().unwrap_or(i64::MAX)))));
    }
    lb.0.extend(key::POOL.iter().filter_map(|k| Some((*k, Item::Value(shared(k)?)))));
    let mut tables = Ordered::default();
    for p in pools {
        let mut pool = Ordered(vec![
            (key::LISTEN, Item::Owned(Value::String(p.listen.to_string()))),
            (key::SERVERS, Item::Owned(Value::Array(p.servers.clone()))),
        ]);
        let own = key::POOL.iter().filter(|k| shared(k).is_none());
        pool.0.extend(own.filter_map(|k| Some((*k, Item::Value(p.vals.get(k)?)))));
        tables.0.push((&p.name, Item::Table(pool)));
    }
    lb.0.push((key::POOLS, Item::Table(tables)));
    let doc = Ordered(vec![("lb", Item::Table(lb))]);
    let toml = toml::to_string(&doc).map_err(|e| format!("cannot write the TOML: {e}"))?;
    Ok(format!("# Translated by exec-allinone import-nginx from {}\n\n{toml}", file.escape_debug()))
}
