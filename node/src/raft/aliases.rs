//! Collection aliases in the cluster map: the apply rule of
//! [`MetaCommand::UpdateAliases`](super::meta::MetaCommand::UpdateAliases).
//!
//! An update's actions apply in order to a copy of the alias table, and the
//! copy replaces the table only when every action succeeded, so one map
//! epoch holds the whole switch. The checks run here, on every replica of
//! the metadata group (deterministic: they read only the map), as well as
//! on the leader before it proposes.
use shoal_proto::internal::v1::ClusterMap;
use shoal_proto::limits::MAX_ALIASES;
use shoal_proto::v1::{alias_action, Alias, UpdateAliasesRequest};

use super::meta::{EXISTS, NOT_FOUND};

/// Applies `req` to `map.aliases`, all or none; `Err` is the rejection
/// reason.
pub fn apply(map: &mut ClusterMap, req: &UpdateAliasesRequest) -> Result<(), String> {
    shoal_proto::validate::alias_update(req).map_err(|e| e.to_string())?;
    let collection_exists = |name: &str| map.collections.iter().any(|c| c.config.as_ref().is_some_and(|c| c.name == name));
    let mut table = map.aliases.clone();
    for (i, a) in req.actions.iter().enumerate() {
        match &a.action {
            Some(alias_action::Action::Put(Alias { alias, collection })) => {
                if collection_exists(alias) {
                    return Err(format!("{EXISTS}: actions[{i}]: {alias:?} is a collection's name"));
                }
                if !collection_exists(collection) {
                    return Err(format!("{NOT_FOUND}: actions[{i}]: collection {collection:?}"));
                }
                match table.binary_search_by(|x| x.alias.as_str().cmp(alias)) {
                    Ok(at) => table[at].collection = collection.clone(),
                    Err(at) => table.insert(at, Alias { alias: alias.clone(), collection: collection.clone() }),
                }
            }
            Some(alias_action::Action::Delete(alias)) => match table.binary_search_by(|x| x.alias.as_str().cmp(alias)) {
                Ok(at) => {
                    table.remove(at);
                }
                Err(_) => return Err(format!("{NOT_FOUND}: actions[{i}]: alias {alias:?}")),
            },
            None => return Err(format!("actions[{i}]: no action")),
        }
    }
    if table.len() > MAX_ALIASES {
        return Err(format!("the cluster would hold {} aliases, the limit is {MAX_ALIASES}", table.len()));
    }
    map.aliases = table;
    Ok(())
}

/// The collection `name` stands for: itself, or an alias's target.
pub fn resolve<'a>(map: &'a ClusterMap, name: &'a str) -> &'a str {
    match map.aliases.binary_search_by(|x| x.alias.as_str().cmp(name)) {
        Ok(at) => &map.aliases[at].collection,
        Err(_) => name,
    }
}

#[cfg(test)]
mod tests {
    use shoal_proto::internal::v1::CollectionEntry;
    use shoal_proto::v1::{AliasAction, CollectionConfig};

    use super::*;

    fn map(names: &[&str]) -> ClusterMap {
        ClusterMap { collections: names.iter().map(|n| CollectionEntry { config: Some(CollectionConfig { name: n.to_string(), ..Default::default() }), ..Default::default() }).collect(), ..Default::default() }
    }

    fn put(alias: &str, collection: &str) -> AliasAction {
        AliasAction { action: Some(alias_action::Action::Put(Alias { alias: alias.into(), collection: collection.into() })) }
    }

    fn del(alias: &str) -> AliasAction {
        AliasAction { action: Some(alias_action::Action::Delete(alias.into())) }
    }

    #[test]
    fn updates_apply_all_or_none_and_stay_sorted() {
        let mut m = map(&["v1", "v2"]);
        apply(&mut m, &UpdateAliasesRequest { actions: vec![put("prod", "v1"), put("b", "v1")] }).unwrap();
        assert_eq!(m.aliases.iter().map(|a| a.alias.as_str()).collect::<Vec<_>>(), ["b", "prod"]);
        assert_eq!(resolve(&m, "prod"), "v1");
        assert_eq!(resolve(&m, "v2"), "v2");
        // The switch: one update re-points prod and drops b.
        apply(&mut m, &UpdateAliasesRequest { actions: vec![del("b"), put("prod", "v2")] }).unwrap();
        assert_eq!(m.aliases, vec![Alias { alias: "prod".into(), collection: "v2".into() }]);
        // A failing action leaves the table as it was.
        let before = m.aliases.clone();
        for bad in [vec![put("x", "v1"), put("y", "missing")], vec![put("x", "v1"), del("nope")], vec![put("v1", "v2")], vec![], vec![AliasAction { action: None }], vec![put("Bad/Name", "v1")]] {
            assert!(apply(&mut m, &UpdateAliasesRequest { actions: bad.clone() }).is_err(), "{bad:?}");
            assert_eq!(m.aliases, before);
        }
    }

    #[test]
    fn the_alias_count_is_bounded() {
        let mut m = map(&["c"]);
        m.aliases = (0..MAX_ALIASES).map(|i| Alias { alias: format!("a{i:05}"), collection: "c".into() }).collect();
        m.aliases.sort_by(|a, b| a.alias.cmp(&b.alias));
        assert!(apply(&mut m, &UpdateAliasesRequest { actions: vec![put("one-more", "c")] }).unwrap_err().contains("limit"));
        apply(&mut m, &UpdateAliasesRequest { actions: vec![del("a00000"), put("one-more", "c")] }).unwrap();
    }
}
