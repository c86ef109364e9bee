//! SCIM PATCH (RFC 7644 §3.5.2) as Okta and Entra send it: ops in any case (`Replace`),
//! paths with value filters (`emails[type eq "work"].value`, `members[value eq "…"]`),
//! URN-qualified paths, no-path `add`/`replace` whose value keys are themselves paths
//! (`"name.givenName"`, `"urn:…:enterprise:2.0:User:department"`), an empty `Operations`
//! list (a no-op).
//!
//! A user PATCH is applied to the resource's JSON form and the result is read back as a
//! whole User ([`super::resource::UserInput`]), so every rule of a PUT applies and a PATCH
//! either applies entirely or not at all. A group PATCH is turned into a
//! [`GroupChange`]: member sets are kept as sets, never as a 10,000-entry JSON list.

use super::filter::{
    get_ci, parse_path, CompValue, CompareOp, Filter, PatchPath, ENTERPRISE_SCHEMA, GROUP_SCHEMA,
    USER_SCHEMA,
};
use super::resource::{boolean, member_refs, MemberRef};
use super::ScimError;
use serde_json::{Map, Value};
use std::collections::BTreeSet;

/// The most operations one PATCH may carry.
pub const MAX_OPERATIONS: usize = 1000;

/// An operation kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Add,
    Remove,
    Replace,
}

/// One PATCH operation.
#[derive(Debug, Clone, PartialEq)]
pub struct Operation {
    pub op: OpKind,
    pub path: Option<PatchPath>,
    pub value: Option<Value>,
}

/// Reads a PatchOp body.
pub fn parse(body: &Value) -> Result<Vec<Operation>, ScimError> {
    let ops = match get_ci(body, "Operations") {
        Some(Value::Array(ops)) => ops,
        Some(_) => {
            return Err(ScimError::InvalidSyntax(
                "Operations must be a list".into(),
            ))
        }
        None => {
            return Err(ScimError::InvalidSyntax(
                "a PATCH body needs \"Operations\": [{\"op\": \"add|remove|replace\", \"path\": ..., \"value\": ...}]".into(),
            ))
        }
    };
    if ops.len() > MAX_OPERATIONS {
        return Err(ScimError::InvalidValue(format!(
            "a PATCH carries at most {MAX_OPERATIONS} operations"
        )));
    }
    ops.iter()
        .enumerate()
        .map(|(i, op)| {
            let kind = match get_ci(op, "op").and_then(Value::as_str) {
                Some(k) if k.eq_ignore_ascii_case("add") => OpKind::Add,
                Some(k) if k.eq_ignore_ascii_case("remove") => OpKind::Remove,
                Some(k) if k.eq_ignore_ascii_case("replace") => OpKind::Replace,
                other => {
                    return Err(ScimError::InvalidSyntax(format!(
                        "operation {} has op {}: use add, remove or replace",
                        i + 1,
                        other.map_or("missing".into(), |o| format!("{o:?}"))
                    )))
                }
            };
            let path = match get_ci(op, "path") {
                None | Some(Value::Null) => None,
                Some(Value::String(p)) if p.trim().is_empty() => None,
                Some(Value::String(p)) => Some(parse_path(p.trim()).map_err(|e| {
                    ScimError::InvalidPath(format!("operation {}: path {p:?} {e}", i + 1))
                })?),
                Some(other) => {
                    return Err(ScimError::InvalidPath(format!(
                        "operation {}: path must be a string, not {other}",
                        i + 1
                    )))
                }
            };
            let value = get_ci(op, "value").cloned();
            if kind != OpKind::Remove && value.is_none() {
                return Err(ScimError::InvalidValue(format!(
                    "operation {} ({}) needs a value",
                    i + 1,
                    if kind == OpKind::Add {
                        "add"
                    } else {
                        "replace"
                    }
                )));
            }
            if kind == OpKind::Remove && path.is_none() {
                return Err(ScimError::NoTarget(format!(
                    "operation {} (remove) needs a path",
                    i + 1
                )));
            }
            Ok(Operation {
                op: kind,
                path,
                value,
            })
        })
        .collect()
}

/// The (canonical) attributes of a User that PATCH may change: (name, multi-valued,
/// sub-attributes). Anything else is not stored by Gatehouse, and an operation on it is
/// ignored (RFC 7644 §3.3 lets a provider ignore attributes it does not keep).
type AttrSpec = (&'static str, bool, &'static [&'static str]);

const USER_ATTRS: &[AttrSpec] = &[
    ("userName", false, &[]),
    ("externalId", false, &[]),
    ("active", false, &[]),
    ("displayName", false, &[]),
    ("title", false, &[]),
    ("name", false, &["givenName", "familyName", "formatted"]),
    ("emails", true, &["value", "type", "primary"]),
];
const ENTERPRISE_ATTRS: &[AttrSpec] = &[("employeeNumber", false, &[]), ("department", false, &[])];

fn canonical<'a>(list: &'a [AttrSpec], name: &str) -> Option<&'a AttrSpec> {
    list.iter().find(|(n, _, _)| n.eq_ignore_ascii_case(name))
}

fn canonical_sub<'a>(subs: &'a [&'a str], name: &str) -> Option<&'a str> {
    subs.iter().copied().find(|s| s.eq_ignore_ascii_case(name))
}

/// Sub-attribute keys of a value object, canonicalised (`"Value"` → `"value"`).
fn canonical_object(value: &Value, subs: &[&str]) -> Value {
    match value {
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| {
                    (
                        canonical_sub(subs, k).map_or_else(|| k.clone(), str::to_owned),
                        v.clone(),
                    )
                })
                .collect(),
        ),
        other => other.clone(),
    }
}

/// Where an operation lands, resolved against the User schema.
struct Target {
    /// `Some(ENTERPRISE_SCHEMA)` for the extension.
    container: Option<&'static str>,
    name: &'static str,
    multi: bool,
    subs: &'static [&'static str],
    /// Sub-attribute of a single-valued complex attribute (`name.givenName`), or after a
    /// value filter (`emails[…].value`).
    sub: Option<&'static str>,
    filter: Option<Filter>,
}

fn resolve(path: &PatchPath) -> Result<Option<Target>, ScimError> {
    let (list, container): (&'static [AttrSpec], Option<&'static str>) = match &path.attr.urn {
        None => (USER_ATTRS, None),
        Some(urn) if urn.eq_ignore_ascii_case(USER_SCHEMA) => (USER_ATTRS, None),
        Some(urn) if urn.eq_ignore_ascii_case(ENTERPRISE_SCHEMA) => {
            (ENTERPRISE_ATTRS, Some(ENTERPRISE_SCHEMA))
        }
        Some(_) => return Ok(None),
    };
    let Some(&(name, multi, subs)) = canonical(list, &path.attr.name) else {
        return Ok(None);
    };
    let sub_name = path.attr.sub.as_deref().or(path.sub.as_deref());
    let sub = match sub_name {
        None => None,
        Some(s) => match canonical_sub(subs, s) {
            Some(s) => Some(s),
            None => return Ok(None),
        },
    };
    if path.filter.is_some() && !multi {
        return Err(ScimError::InvalidPath(format!(
            "{name} is single-valued: a value filter applies to multi-valued attributes"
        )));
    }
    if multi && path.filter.is_none() && sub.is_some() {
        return Err(ScimError::InvalidPath(format!(
            "{name} is multi-valued: name the entry with a filter, e.g. {name}[type eq \"work\"].{}",
            sub.unwrap_or("value")
        )));
    }
    Ok(Some(Target {
        container,
        name,
        multi,
        subs,
        sub,
        filter: path.filter.clone(),
    }))
}

fn object_mut<'a>(parent: &'a mut Map<String, Value>, key: &str) -> &'a mut Map<String, Value> {
    let slot = parent
        .entry(key.to_owned())
        .or_insert_with(|| Value::Object(Map::new()));
    if !slot.is_object() {
        *slot = Value::Object(Map::new());
    }
    slot.as_object_mut().expect("made an object above")
}

/// The `attr eq "v"` constraints of a filter (joined by `and`): what a new entry created by
/// `add`/`replace` on an unmatched filter must carry.
fn eq_constraints(filter: &Filter, out: &mut Vec<(String, Value)>) {
    match filter {
        Filter::Compare(path, CompareOp::Eq, value) if path.sub.is_none() && path.urn.is_none() => {
            let v = match value {
                CompValue::Str(s) => Value::String(s.clone()),
                CompValue::Bool(b) => Value::Bool(*b),
                CompValue::Number(n) => Value::Number(n.clone()),
                CompValue::Null => return,
            };
            out.push((path.name.clone(), v));
        }
        Filter::And(a, b) => {
            eq_constraints(a, out);
            eq_constraints(b, out);
        }
        _ => {}
    }
}

fn apply_target(
    resource: &mut Map<String, Value>,
    op: OpKind,
    target: &Target,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let holder = match target.container {
        Some(urn) => object_mut(resource, urn),
        None => resource,
    };
    let name = target.name;
    if let Some(filter) = &target.filter {
        // Multi-valued with a value filter.
        let list = holder
            .entry(name.to_owned())
            .or_insert_with(|| Value::Array(Vec::new()));
        if !list.is_array() {
            *list = Value::Array(Vec::new());
        }
        let items = list.as_array_mut().expect("made an array above");
        let mut matched = Vec::new();
        for (i, item) in items.iter().enumerate() {
            if filter
                .matches(item)
                .map_err(|e| ScimError::InvalidPath(e.0))?
            {
                matched.push(i);
            }
        }
        match (op, target.sub) {
            (OpKind::Remove, None) => {
                for i in matched.into_iter().rev() {
                    items.remove(i);
                }
            }
            (OpKind::Remove, Some(sub)) => {
                for i in matched {
                    if let Some(m) = items[i].as_object_mut() {
                        m.remove(sub);
                    }
                }
            }
            (_, sub) => {
                let value = value.cloned().unwrap_or(Value::Null);
                if matched.is_empty() {
                    // Entra adds `emails[type eq "work"].value` to a user without one:
                    // the entry is created from the filter's `eq` terms.
                    let mut constraints = Vec::new();
                    eq_constraints(filter, &mut constraints);
                    let mut entry = Map::new();
                    for (k, v) in constraints {
                        let k = canonical_sub(target.subs, &k).map_or(k.clone(), str::to_owned);
                        entry.insert(k, v);
                    }
                    match sub {
                        Some(sub) => {
                            entry.insert(sub.to_owned(), value);
                        }
                        None => {
                            if let Value::Object(m) = canonical_object(&value, target.subs) {
                                entry.extend(m);
                            }
                        }
                    }
                    items.push(Value::Object(entry));
                } else {
                    for i in matched {
                        match sub {
                            Some(sub) => {
                                if let Some(m) = items[i].as_object_mut() {
                                    m.insert(sub.to_owned(), value.clone());
                                }
                            }
                            None => {
                                if let (Some(m), Value::Object(new)) = (
                                    items[i].as_object_mut(),
                                    canonical_object(&value, target.subs),
                                ) {
                                    if op == OpKind::Replace {
                                        m.clear();
                                    }
                                    m.extend(new);
                                }
                            }
                        }
                    }
                }
            }
        }
        return Ok(());
    }
    match (op, target.sub) {
        (OpKind::Remove, None) => {
            match (target.multi, value) {
                // Remove only the listed entries (`{"op": "remove", "path": "emails", "value": [...]}`).
                (true, Some(Value::Array(gone))) => {
                    if let Some(Value::Array(items)) = holder.get_mut(name) {
                        let gone: Vec<Value> = gone
                            .iter()
                            .map(|g| canonical_object(g, target.subs))
                            .collect();
                        items.retain(|item| {
                            !gone
                                .iter()
                                .any(|g| get_ci(g, "value") == get_ci(item, "value"))
                        });
                    }
                }
                _ => {
                    holder.remove(name);
                }
            }
        }
        (OpKind::Remove, Some(sub)) => {
            if let Some(Value::Object(m)) = holder.get_mut(name) {
                m.remove(sub);
            }
        }
        (_, Some(sub)) => {
            object_mut(holder, name).insert(sub.to_owned(), value.cloned().unwrap_or(Value::Null));
        }
        (op, None) => {
            let value = value.cloned().unwrap_or(Value::Null);
            if target.multi {
                let new: Vec<Value> = match &value {
                    Value::Array(items) => items
                        .iter()
                        .map(|v| canonical_object(v, target.subs))
                        .collect(),
                    Value::Null => Vec::new(),
                    other => vec![canonical_object(other, target.subs)],
                };
                if op == OpKind::Add {
                    let list = holder
                        .entry(name.to_owned())
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if !list.is_array() {
                        *list = Value::Array(Vec::new());
                    }
                    let items = list.as_array_mut().expect("made an array above");
                    for v in new {
                        if !items.contains(&v) {
                            items.push(v);
                        }
                    }
                } else {
                    holder.insert(name.to_owned(), Value::Array(new));
                }
            } else if target.subs.is_empty() {
                holder.insert(name.to_owned(), value);
            } else {
                // A complex single-valued attribute (`name`): add merges, replace sets.
                let new = canonical_object(&value, target.subs);
                match (op, new) {
                    (OpKind::Add, Value::Object(new)) => object_mut(holder, name).extend(new),
                    (_, new) => {
                        holder.insert(name.to_owned(), new);
                    }
                }
            }
        }
    }
    Ok(())
}

/// The read-only attributes of every resource (RFC 7643 §3.1, `mutability: readOnly`).
const READ_ONLY: [&str; 3] = ["id", "meta", "schemas"];

/// Refuses an operation whose path is a read-only attribute (`id`, `meta` or one of its
/// sub-attributes, `schemas`), bare or under the resource's core schema URN: RFC 7644
/// §3.5.2 answers `mutability` rather than ignoring it.
fn check_writable(op: OpKind, path: &PatchPath, core: &str) -> Result<(), ScimError> {
    let core_urn = path
        .attr
        .urn
        .as_deref()
        .is_none_or(|u| u.eq_ignore_ascii_case(core));
    if core_urn
        && READ_ONLY
            .iter()
            .any(|k| k.eq_ignore_ascii_case(&path.attr.name))
    {
        let verb = match op {
            OpKind::Add => "add",
            OpKind::Remove => "remove",
            OpKind::Replace => "replace",
        };
        return Err(ScimError::Mutability(format!(
            "{path} is read-only: a PATCH cannot {verb} it"
        )));
    }
    Ok(())
}

/// The (path, value) pairs of a no-path `add`/`replace`: each key is a path (possibly
/// dotted or URN-qualified); an extension URN key holds an object of its attributes.
/// `meta` and `schemas` in the value are ignored (clients send the resource back as they
/// read it), and so is an `id` equal to the resource's own (`own_id`; Entra's group
/// rename sends it); any other `id` is an attempt to change it, refused (`mutability`).
fn no_path_pairs(value: &Value, own_id: &str) -> Result<Vec<(PatchPath, Value)>, ScimError> {
    let Value::Object(map) = value else {
        return Err(ScimError::InvalidValue(
            "an add or replace without a path needs an object value".into(),
        ));
    };
    let mut pairs = Vec::new();
    for (key, v) in map {
        if key.eq_ignore_ascii_case("id") {
            if v.as_str() == Some(own_id) {
                continue;
            }
            return Err(ScimError::Mutability(format!(
                "id is read-only: the value of an add or replace without a path has id {v}, not this resource's id {own_id:?}"
            )));
        }
        // `id` is handled above: what is left of the read-only ones is `meta`, `schemas`.
        if READ_ONLY.iter().any(|k| k.eq_ignore_ascii_case(key)) {
            continue;
        }
        if key.eq_ignore_ascii_case(ENTERPRISE_SCHEMA) {
            if let Value::Object(ext) = v {
                for (k2, v2) in ext {
                    let path = parse_path(&format!("{ENTERPRISE_SCHEMA}:{k2}"))
                        .map_err(|e| ScimError::InvalidPath(format!("{k2:?} {e}")))?;
                    pairs.push((path, v2.clone()));
                }
                continue;
            }
        }
        let path = parse_path(key).map_err(|e| ScimError::InvalidPath(format!("{key:?} {e}")))?;
        pairs.push((path, v.clone()));
    }
    Ok(pairs)
}

/// What one operation writes: its path and value, or, without a path, each attribute of
/// its value (see [`no_path_pairs`]); refused when one is read-only in the resource whose
/// core schema is `core` and whose id is `own_id`.
fn targets(
    op: &Operation,
    own_id: &str,
    core: &str,
) -> Result<Vec<(PatchPath, Option<Value>)>, ScimError> {
    let pairs: Vec<(PatchPath, Option<Value>)> = match &op.path {
        Some(path) => vec![(path.clone(), op.value.clone())],
        None => no_path_pairs(op.value.as_ref().unwrap_or(&Value::Null), own_id)?
            .into_iter()
            .map(|(p, v)| (p, Some(v)))
            .collect(),
    };
    for (path, _) in &pairs {
        check_writable(op.op, path, core)?;
    }
    Ok(pairs)
}

/// Applies operations to a User resource's JSON form. Operations on attributes Gatehouse
/// does not store are ignored.
pub fn apply_user(resource: &mut Value, ops: &[Operation]) -> Result<(), ScimError> {
    let Value::Object(map) = resource else {
        return Err(ScimError::Internal(
            "a user resource is not an object".into(),
        ));
    };
    let own_id = map
        .get("id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    for op in ops {
        let pairs = targets(op, &own_id, USER_SCHEMA)?;
        let primaries_before: Vec<Value> = emails(map)
            .map(|items| items.iter().filter(|e| is_primary(e)).cloned().collect())
            .unwrap_or_default();
        for (path, value) in pairs {
            if is_enterprise_whole(&path) {
                apply_enterprise_whole(map, op.op, value.as_ref())?;
                continue;
            }
            if let Some(target) = resolve(&path)? {
                apply_target(map, op.op, &target, value.as_ref())?;
            }
        }
        one_primary(map, &primaries_before)?;
    }
    Ok(())
}

/// The resource's `emails` entries, if it has any.
fn emails(map: &Map<String, Value>) -> Option<&Vec<Value>> {
    map.get("emails").and_then(Value::as_array)
}

/// Whether an `emails` entry says `primary: true` (Entra: `"True"`), as a User's
/// `emails` are read ([`boolean`]); anything else is not primary.
fn is_primary(entry: &Value) -> bool {
    get_ci(entry, "primary").is_some_and(|v| boolean(v, "emails.primary").unwrap_or(false))
}

/// At most one email is primary (RFC 7643 §2.4). An operation that makes one primary
/// (an entry that is primary now and was not a primary entry before it) takes the flag
/// from the others (RFC 7644 §3.5.2); one that makes two primary is refused. Entries
/// the operation left alone are not judged, so an older record with two primaries can
/// still be patched elsewhere.
fn one_primary(map: &mut Map<String, Value>, before: &[Value]) -> Result<(), ScimError> {
    let Some(items) = map.get_mut("emails").and_then(Value::as_array_mut) else {
        return Ok(());
    };
    let new: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, e)| is_primary(e) && !before.contains(e))
        .map(|(i, _)| i)
        .collect();
    match new[..] {
        [] => Ok(()),
        [chosen] => {
            for (i, entry) in items.iter_mut().enumerate() {
                if i != chosen && is_primary(entry) {
                    if let Some(m) = entry.as_object_mut() {
                        m.retain(|k, _| !k.eq_ignore_ascii_case("primary"));
                        m.insert("primary".into(), Value::Bool(false));
                    }
                }
            }
            Ok(())
        }
        _ => Err(ScimError::InvalidValue(format!(
            "{} emails would be primary: at most one email can be (RFC 7643 §2.4)",
            new.len()
        ))),
    }
}

/// Whether a path names the whole enterprise extension
/// (`urn:ietf:params:scim:schemas:extension:enterprise:2.0:User`), which the path grammar
/// reads as attribute `User` of URN `…:enterprise:2.0`.
fn is_enterprise_whole(path: &PatchPath) -> bool {
    path.filter.is_none()
        && path.sub.is_none()
        && path.attr.sub.is_none()
        && path.attr.urn.as_ref().is_some_and(|urn| {
            format!("{urn}:{}", path.attr.name).eq_ignore_ascii_case(ENTERPRISE_SCHEMA)
        })
}

/// `remove` drops the whole extension; `add` merges an object of its attributes in,
/// `replace` sets exactly that object's attributes.
fn apply_enterprise_whole(
    map: &mut Map<String, Value>,
    op: OpKind,
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let existing: Vec<String> = map
        .keys()
        .filter(|k| k.eq_ignore_ascii_case(ENTERPRISE_SCHEMA))
        .cloned()
        .collect();
    if op == OpKind::Replace || op == OpKind::Remove {
        for k in &existing {
            map.remove(k);
        }
    }
    if op == OpKind::Remove {
        return Ok(());
    }
    let Some(Value::Object(ext)) = value else {
        return Err(ScimError::InvalidValue(format!(
            "a value for {ENTERPRISE_SCHEMA} must be an object of its attributes"
        )));
    };
    for (k, v) in ext {
        let path = parse_path(&format!("{ENTERPRISE_SCHEMA}:{k}"))
            .map_err(|e| ScimError::InvalidPath(format!("{k:?} {e}")))?;
        if let Some(target) = resolve(&path)? {
            apply_target(map, OpKind::Replace, &target, Some(v))?;
        }
    }
    Ok(())
}

/// What a group PATCH does, in order of the operations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GroupChange {
    pub display_name: Option<String>,
    pub external_id: Option<Option<String>>,
    /// Member operations, in order.
    pub members: Vec<MemberOp>,
}

/// One change to a group's members.
#[derive(Debug, Clone, PartialEq)]
pub enum MemberOp {
    Add(Vec<MemberRef>),
    Remove(Vec<String>),
    /// Remove the members a filter matches (`members[value eq "…"]`).
    RemoveWhere(Filter),
    Clear,
    Replace(Vec<MemberRef>),
}

fn group_string(value: Option<&Value>, what: &str) -> Result<Option<String>, ScimError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.trim().to_owned())),
        Some(other) => Err(ScimError::InvalidValue(format!(
            "{what} must be a string, not {other}"
        ))),
    }
}

/// Reads group PATCH operations on group `id`.
pub fn group_change(ops: &[Operation], id: &str) -> Result<GroupChange, ScimError> {
    let mut change = GroupChange::default();
    for op in ops {
        for (path, value) in targets(op, id, GROUP_SCHEMA)? {
            let urn_ok = path
                .attr
                .urn
                .as_deref()
                .is_none_or(|u| u.eq_ignore_ascii_case(GROUP_SCHEMA));
            let name = path.attr.name.to_ascii_lowercase();
            if !urn_ok {
                continue;
            }
            match name.as_str() {
                "members" => {
                    if path.attr.sub.is_some() || path.sub.is_some() {
                        return Err(ScimError::InvalidPath(
                            "members are changed whole: add, remove or replace {\"value\": id} entries".into(),
                        ));
                    }
                    let member_op = match (op.op, path.filter) {
                        (OpKind::Remove, Some(filter)) => match filter.indexed_eq("value") {
                            Some(id) if matches!(filter, Filter::Compare(..)) => {
                                MemberOp::Remove(vec![id.to_owned()])
                            }
                            _ => MemberOp::RemoveWhere(filter),
                        },
                        (_, Some(_)) => {
                            return Err(ScimError::InvalidPath(
                                "a members value filter only selects members to remove".into(),
                            ))
                        }
                        (OpKind::Remove, None) => match value {
                            None | Some(Value::Null) => MemberOp::Clear,
                            Some(v) => MemberOp::Remove(
                                member_refs(&v)?.into_iter().map(|m| m.value).collect(),
                            ),
                        },
                        (OpKind::Add, None) => {
                            MemberOp::Add(member_refs(value.as_ref().unwrap_or(&Value::Null))?)
                        }
                        (OpKind::Replace, None) => {
                            MemberOp::Replace(member_refs(value.as_ref().unwrap_or(&Value::Null))?)
                        }
                    };
                    change.members.push(member_op);
                }
                "displayname" => match op.op {
                    OpKind::Remove => {
                        return Err(ScimError::Mutability(
                            "displayName is required and cannot be removed".into(),
                        ))
                    }
                    _ => {
                        change.display_name =
                            Some(group_string(value.as_ref(), "displayName")?.ok_or_else(|| {
                                ScimError::InvalidValue("displayName cannot be empty".into())
                            })?)
                    }
                },
                "externalid" => {
                    change.external_id = Some(match op.op {
                        OpKind::Remove => None,
                        _ => group_string(value.as_ref(), "externalId")?,
                    })
                }
                // Attributes Gatehouse does not keep on a team are ignored.
                _ => {}
            }
        }
    }
    Ok(change)
}

impl GroupChange {
    /// The member set after the operations, from `before`; and the values that were
    /// asked to be added (to check each is a user).
    pub fn members_after(
        &self,
        before: &BTreeSet<String>,
    ) -> Result<(BTreeSet<String>, Vec<MemberRef>), ScimError> {
        let mut after = before.clone();
        let mut asked = Vec::new();
        for op in &self.members {
            match op {
                MemberOp::Add(refs) => {
                    after.extend(refs.iter().map(|r| r.value.clone()));
                    asked.extend(refs.iter().cloned());
                }
                MemberOp::Remove(ids) => {
                    for id in ids {
                        after.remove(id);
                    }
                }
                MemberOp::RemoveWhere(filter) => {
                    let mut keep = BTreeSet::new();
                    for id in after {
                        let member = serde_json::json!({ "value": id, "type": "User" });
                        if !filter
                            .matches(&member)
                            .map_err(|e| ScimError::InvalidPath(e.0))?
                        {
                            keep.insert(id);
                        }
                    }
                    after = keep;
                }
                MemberOp::Clear => after.clear(),
                MemberOp::Replace(refs) => {
                    after = refs.iter().map(|r| r.value.clone()).collect();
                    asked.extend(refs.iter().cloned());
                }
            }
        }
        Ok((after, asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ops(body: Value) -> Vec<Operation> {
        parse(&body).unwrap()
    }

    fn user() -> Value {
        json!({"id": "usr_1", "userName": "ann@acme.io", "active": true, "name": {"givenName": "Ann"}, "emails": [{"value": "ann@acme.io", "type": "work", "primary": true}]})
    }

    #[test]
    fn read_only_attributes_are_refused_with_mutability() {
        for body in [
            json!({"Operations": [{"op": "replace", "path": "id", "value": "usr_2"}]}),
            json!({"Operations": [{"op": "replace", "path": "meta.lastModified", "value": "2026-01-01T00:00:00Z"}]}),
            json!({"Operations": [{"op": "add", "path": "META", "value": {}}]}),
            json!({"Operations": [{"op": "remove", "path": "schemas"}]}),
            json!({"Operations": [{"op": "replace", "path": "urn:ietf:params:scim:schemas:core:2.0:User:id", "value": "x"}]}),
            json!({"Operations": [{"op": "replace", "value": {"id": "usr_2", "title": "t"}}]}),
            json!({"Operations": [{"op": "replace", "value": {"meta.version": "W/\"1\""}}]}),
        ] {
            let mut u = user();
            let err = apply_user(&mut u, &ops(body.clone())).unwrap_err();
            assert!(matches!(err, ScimError::Mutability(_)), "{body}: {err}");
            assert_eq!(u, user(), "{body}: nothing applied");
        }
        // The resource's own id (and meta, schemas) in a no-path value are ignored.
        let mut u = user();
        apply_user(&mut u, &ops(json!({"Operations": [{"op": "replace", "value": {"id": "usr_1", "schemas": [], "meta": {}, "title": "t"}}]}))).unwrap();
        assert_eq!(u["title"], json!("t"));
        // Groups: the same, with the group's id.
        let rename = ops(
            json!({"Operations": [{"op": "replace", "value": {"id": "team_1", "displayName": "R"}}]}),
        );
        assert_eq!(
            group_change(&rename, "team_1")
                .unwrap()
                .display_name
                .as_deref(),
            Some("R")
        );
        assert!(matches!(
            group_change(&rename, "team_2"),
            Err(ScimError::Mutability(_))
        ));
        let meta =
            ops(json!({"Operations": [{"op": "replace", "path": "meta.created", "value": "x"}]}));
        assert!(matches!(
            group_change(&meta, "team_1"),
            Err(ScimError::Mutability(_))
        ));
    }

    #[test]
    fn a_new_primary_email_takes_the_flag_from_the_others() {
        let mut u = user();
        apply_user(&mut u, &ops(json!({"Operations": [
            {"op": "add", "path": "emails", "value": [{"value": "ann@home.io", "type": "home", "primary": true}]},
        ]}))).unwrap();
        assert_eq!(
            u["emails"],
            json!([
                {"value": "ann@acme.io", "type": "work", "primary": false},
                {"value": "ann@home.io", "type": "home", "primary": true},
            ])
        );
        // Entra's dialect: a string flag on a filtered entry.
        apply_user(
            &mut u,
            &ops(json!({"Operations": [
                {"op": "Replace", "path": "emails[type eq \"work\"].primary", "value": "True"},
            ]})),
        )
        .unwrap();
        assert_eq!(
            u["emails"],
            json!([
                {"value": "ann@acme.io", "type": "work", "primary": "True"},
                {"value": "ann@home.io", "type": "home", "primary": false},
            ])
        );
        // An operation that makes two primary is refused.
        let err = apply_user(&mut u, &ops(json!({"Operations": [
            {"op": "replace", "path": "emails", "value": [{"value": "a@x.io", "primary": true}, {"value": "b@x.io", "primary": true}]},
        ]}))).unwrap_err();
        assert!(matches!(err, ScimError::InvalidValue(_)), "{err}");
        // An operation elsewhere leaves an older record's two primaries alone.
        let mut two = json!({"id": "usr_1", "userName": "u", "emails": [{"value": "a@x.io", "primary": true}, {"value": "b@x.io", "primary": true}]});
        apply_user(
            &mut two,
            &ops(json!({"Operations": [{"op": "replace", "path": "title", "value": "t"}]})),
        )
        .unwrap();
        assert_eq!(two["emails"][0]["primary"], json!(true));
        assert_eq!(two["emails"][1]["primary"], json!(true));
    }

    #[test]
    fn entra_dialect_applies() {
        let mut u = user();
        apply_user(&mut u, &ops(json!({"schemas": [super::super::PATCH_SCHEMA], "Operations": [
            {"op": "Replace", "path": "active", "value": "False"},
            {"op": "Add", "path": "emails[type eq \"home\"].value", "value": "ann@home.io"},
            {"op": "Replace", "path": "emails[type eq \"work\"].value", "value": "ann@acme.com"},
            {"op": "Replace", "path": "name.familyName", "value": "Lee"},
            {"op": "Add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "R&D"},
            {"op": "Add", "path": "addresses[type eq \"work\"].formatted", "value": "ignored"},
        ]}))).unwrap();
        assert_eq!(u["active"], json!("False"));
        assert_eq!(
            u["emails"],
            json!([{"value": "ann@acme.com", "type": "work", "primary": true}, {"type": "home", "value": "ann@home.io"}])
        );
        assert_eq!(u["name"], json!({"givenName": "Ann", "familyName": "Lee"}));
        assert_eq!(u[ENTERPRISE_SCHEMA], json!({"department": "R&D"}));
        assert!(u.get("addresses").is_none());
    }

    #[test]
    fn no_path_replace_takes_dotted_and_urn_keys() {
        let mut u = user();
        apply_user(
            &mut u,
            &ops(json!({"Operations": [{"op": "replace", "value": {
                "active": false, "name.familyName": "Lee", "DisplayName": "Ann Lee",
                "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:employeeNumber": "7",
                ENTERPRISE_SCHEMA: {"department": "Ops"}, "id": "usr_1"
            }}]})),
        )
        .unwrap();
        assert_eq!(u["active"], json!(false));
        assert_eq!(u["displayName"], json!("Ann Lee"));
        assert_eq!(u["name"]["familyName"], json!("Lee"));
        assert_eq!(
            u[ENTERPRISE_SCHEMA],
            json!({"employeeNumber": "7", "department": "Ops"})
        );
    }

    #[test]
    fn bad_operations_are_refused_with_a_reason() {
        for (body, needle) in [
            (json!({}), "Operations"),
            (
                json!({"Operations": [{"op": "move", "path": "a"}]}),
                "use add, remove or replace",
            ),
            (json!({"Operations": [{"op": "remove"}]}), "needs a path"),
            (
                json!({"Operations": [{"op": "add", "path": "x"}]}),
                "needs a value",
            ),
            (
                json!({"Operations": [{"op": "add", "path": "a[", "value": 1}]}),
                "path",
            ),
        ] {
            let err = parse(&body).unwrap_err();
            assert!(err.to_string().contains(needle), "{body}: {err}");
        }
        assert!(parse(&json!({"Operations": []})).unwrap().is_empty());
    }

    #[test]
    fn group_member_dialects() {
        let before: BTreeSet<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let change = group_change(
            &ops(json!({"Operations": [
                {"op": "add", "path": "members", "value": [{"value": "d"}, {"value": "a"}]},
                {"op": "remove", "path": "members[value eq \"b\"]"},
                {"op": "Remove", "path": "members", "value": [{"value": "c"}]},
                {"op": "replace", "value": {"id": "x", "displayName": "Renamed"}},
            ]})),
            "x",
        )
        .unwrap();
        let (after, _) = change.members_after(&before).unwrap();
        assert_eq!(after.into_iter().collect::<Vec<_>>(), ["a", "d"]);
        assert_eq!(change.display_name.as_deref(), Some("Renamed"));
        let clear = group_change(
            &ops(json!({"Operations": [{"op": "remove", "path": "members"}]})),
            "x",
        )
        .unwrap();
        assert!(clear.members_after(&before).unwrap().0.is_empty());
        let replace = group_change(&ops(json!({"Operations": [{"op": "replace", "path": "members", "value": [{"value": "z"}]}]})), "x").unwrap();
        assert_eq!(
            replace
                .members_after(&before)
                .unwrap()
                .0
                .into_iter()
                .collect::<Vec<_>>(),
            ["z"]
        );
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(500))]

            /// Any operations (well-formed or not) on a user never panic, and adding then
            /// removing members never loses one that was neither added nor removed.
            #[test]
            fn patches_never_panic(
                op in "(add|Remove|REPLACE|x)",
                path in r#"(emails|name|members|active|urn:a:b|emails\[type eq "w"\]|\.|\[|\]|"|value|\.value| ){0,8}"#,
                value in prop_oneof![Just(json!(null)), Just(json!("v")), Just(json!({"value": "x"})), Just(json!([{"value": "y"}])), Just(json!({"a.b": 1}))],
            ) {
                let body = json!({"Operations": [{"op": op, "path": path, "value": value}]});
                if let Ok(ops) = parse(&body) {
                    let mut u = user();
                    let _ = apply_user(&mut u, &ops);
                    if let Ok(change) = group_change(&ops, "x") {
                        let _ = change.members_after(&BTreeSet::new());
                    }
                }
            }

            #[test]
            fn member_patches_keep_untouched_members(
                start in proptest::collection::btree_set("[a-f]{1,2}", 0..20),
                add in proptest::collection::vec("[a-f]{1,2}", 0..10),
                remove in proptest::collection::vec("[a-f]{1,2}", 0..10),
            ) {
                let add_refs: Vec<Value> = add.iter().map(|v| json!({"value": v})).collect();
                let rm_refs: Vec<Value> = remove.iter().map(|v| json!({"value": v})).collect();
                let change = group_change(&parse(&json!({"Operations": [
                    {"op": "add", "path": "members", "value": add_refs},
                    {"op": "remove", "path": "members", "value": rm_refs},
                ]})).unwrap(), "g").unwrap();
                let (after, _) = change.members_after(&start).unwrap();
                for m in start.iter().chain(add.iter()) {
                    prop_assert_eq!(after.contains(m), !remove.contains(m));
                }
            }
        }
    }
}
