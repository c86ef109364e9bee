//! SCIM resources: a user's SCIM attributes as stored, the User and Group wire forms (in
//! and out), `attributes`/`excludedAttributes` projection, and the discovery documents
//! (`ServiceProviderConfig`, `ResourceTypes`, `Schemas`), which describe exactly what
//! Gatehouse stores.

use super::filter::{
    get_ci, parse_attr_path, AttrPath, ENTERPRISE_SCHEMA, GROUP_SCHEMA, USER_SCHEMA,
};
use super::ScimError;
use crate::identity::{Email, Team, User};
use crate::store::{Record, Space};
use gatehouse_rules::UserStatus;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use time::OffsetDateTime;

/// One email of a SCIM user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScimEmail {
    pub value: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub primary: bool,
}

/// What a SCIM connection keeps about a user it provisioned, beyond the [`User`] record:
/// keyed by connection and user id. Its presence is what puts the user in the
/// connection's scope; after a SCIM DELETE it stays as the tombstone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScimUser {
    pub user: String,
    pub user_name: String,
    #[serde(default)]
    pub emails: Vec<ScimEmail>,
    #[serde(default)]
    pub formatted_name: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    #[serde(default)]
    pub employee_number: Option<String>,
    #[serde(default)]
    pub department: Option<String>,
    /// `active` was removed by a PATCH (decision 56): the user is deactivated and its
    /// resource carries no `active` until a client sets it again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub active_unassigned: bool,
    /// Set by a SCIM DELETE: the user is gone, this record is its tombstone.
    #[serde(with = "time::serde::rfc3339::option", default)]
    pub deleted_at: Option<OffsetDateTime>,
}

impl Record for ScimUser {
    const SPACE: Space = Space::ScimUsers;
}

/// A membership the IdP asked for whose member is not (yet) a user of the connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PendingMember {
    pub team: String,
    /// The member value as sent: matched later against a new user's externalId or userName.
    pub value: String,
    #[serde(with = "time::serde::rfc3339")]
    pub requested_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Record for PendingMember {
    const SPACE: Space = Space::ScimPending;
}

/// A user as a SCIM client sent it (POST, PUT, or the result of a PATCH).
#[derive(Debug, Clone, PartialEq)]
pub struct UserInput {
    pub user_name: String,
    pub external_id: Option<String>,
    /// `active` as sent; `None` when absent (or null): a POST then creates an active
    /// user, a PUT keeps the user's status (decision 88).
    pub active: Option<bool>,
    /// `active` is unassigned (removed by a PATCH): the user is deactivated (decision 56).
    pub active_unassigned: bool,
    pub display_name: Option<String>,
    pub given_name: Option<String>,
    pub family_name: Option<String>,
    pub formatted_name: Option<String>,
    pub title: Option<String>,
    pub emails: Vec<ScimEmail>,
    pub employee_number: Option<String>,
    pub department: Option<String>,
}

fn string(value: Option<&Value>, what: &str) -> Result<Option<String>, ScimError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => {
            let s = s.trim();
            if s.len() > 1024 {
                return Err(ScimError::InvalidValue(format!(
                    "{what} is longer than 1024 characters"
                )));
            }
            Ok((!s.is_empty()).then(|| s.to_owned()))
        }
        Some(other) => Err(ScimError::InvalidValue(format!(
            "{what} must be a string, not {other}"
        ))),
    }
}

/// A SCIM boolean: JSON `true`/`false`, or (Entra) the strings `"True"`/`"False"` in any case.
pub fn boolean(value: &Value, what: &str) -> Result<bool, ScimError> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(ScimError::InvalidValue(format!(
            "{what} must be a boolean, not {other}"
        ))),
    }
}

impl UserInput {
    /// Reads a User resource; attribute names are case-insensitive, attributes Gatehouse
    /// does not store are ignored (RFC 7644 §3.3), read-only ones (`id`, `meta`) too.
    pub fn from_json(body: &Value) -> Result<UserInput, ScimError> {
        if !body.is_object() {
            return Err(ScimError::InvalidSyntax(
                "a User resource must be a JSON object".into(),
            ));
        }
        let user_name = string(get_ci(body, "userName"), "userName")?
            .ok_or_else(|| ScimError::InvalidValue("userName is required".into()))?;
        let name = get_ci(body, "name");
        if name.is_some_and(|n| !n.is_object() && !n.is_null()) {
            return Err(ScimError::InvalidValue("name must be an object".into()));
        }
        let name = name.filter(|n| n.is_object());
        let sub = |key: &str| name.and_then(|n| get_ci(n, key));
        let mut emails = Vec::new();
        match get_ci(body, "emails") {
            None | Some(Value::Null) => {}
            Some(Value::Array(items)) => {
                for item in items {
                    let Some(value) = string(get_ci(item, "value"), "emails.value")? else {
                        continue;
                    };
                    let primary = match get_ci(item, "primary") {
                        None | Some(Value::Null) => false,
                        Some(v) => boolean(v, "emails.primary")?,
                    };
                    emails.push(ScimEmail {
                        value,
                        kind: string(get_ci(item, "type"), "emails.type")?,
                        primary,
                    });
                }
            }
            Some(_) => {
                return Err(ScimError::InvalidValue(
                    "emails must be a list of {value, type, primary}".into(),
                ))
            }
        }
        if emails.len() > 20 {
            return Err(ScimError::InvalidValue(
                "a user has at most 20 emails".into(),
            ));
        }
        let enterprise = get_ci(body, ENTERPRISE_SCHEMA).filter(|e| e.is_object());
        let ext = |key: &str| enterprise.and_then(|e| get_ci(e, key));
        Ok(UserInput {
            user_name,
            external_id: string(get_ci(body, "externalId"), "externalId")?,
            active: match get_ci(body, "active") {
                None | Some(Value::Null) => None,
                Some(v) => Some(boolean(v, "active")?),
            },
            active_unassigned: false,
            display_name: string(get_ci(body, "displayName"), "displayName")?,
            given_name: string(sub("givenName"), "name.givenName")?,
            family_name: string(sub("familyName"), "name.familyName")?,
            formatted_name: string(sub("formatted"), "name.formatted")?,
            title: string(get_ci(body, "title"), "title")?,
            emails,
            employee_number: string(ext("employeeNumber"), "employeeNumber")?,
            department: string(ext("department"), "department")?,
        })
    }

    /// Refuses more than one primary email (RFC 7643 §2.4): a POST or PUT sends the whole
    /// list, so two primaries there are the client's contradiction, not a change to take.
    pub fn check_one_primary(&self) -> Result<(), ScimError> {
        let primaries = self.emails.iter().filter(|e| e.primary).count();
        if primaries > 1 {
            return Err(ScimError::InvalidValue(format!(
                "{primaries} emails are primary: at most one email can be (RFC 7643 §2.4)"
            )));
        }
        Ok(())
    }

    /// The user's email (SPEC §7): `userName` when it is an address, else the primary (or
    /// first) of `emails`; `None` when there is neither (RFC 7643 requires only `userName`).
    pub fn email(&self) -> Result<Option<Email>, ScimError> {
        if let Ok(email) = Email::parse(&self.user_name) {
            return Ok(Some(email));
        }
        let chosen = self
            .emails
            .iter()
            .find(|e| e.primary)
            .or_else(|| self.emails.first());
        chosen
            .map(|e| Email::parse(&e.value).map_err(ScimError::InvalidValue))
            .transpose()
    }
}

/// `W/"<nanoseconds of the last change>"`.
pub fn version(updated_at: OffsetDateTime) -> String {
    format!("W/\"{}\"", updated_at.unix_timestamp_nanos())
}

fn rfc3339(at: OffsetDateTime) -> String {
    at.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

fn meta(kind: &str, location: String, created: OffsetDateTime, updated: OffsetDateTime) -> Value {
    json!({
        "resourceType": kind,
        "created": rfc3339(created),
        "lastModified": rfc3339(updated),
        "location": location,
        "version": version(updated),
    })
}

fn put(object: &mut Map<String, Value>, key: &str, value: &Option<String>) {
    if let Some(value) = value {
        object.insert(key.to_owned(), Value::String(value.clone()));
    }
}

/// The User resource of a user (`base`: the connection's SCIM base URL).
pub fn user_json(user: &User, scim: &ScimUser, base: &str) -> Value {
    let mut out = Map::new();
    let enterprise = scim.employee_number.is_some() || scim.department.is_some();
    let mut schemas = vec![json!(USER_SCHEMA)];
    if enterprise {
        schemas.push(json!(ENTERPRISE_SCHEMA));
    }
    out.insert("schemas".into(), Value::Array(schemas));
    out.insert("id".into(), json!(user.id));
    put(&mut out, "externalId", &user.external_id);
    out.insert("userName".into(), json!(scim.user_name));
    let mut name = Map::new();
    put(&mut name, "givenName", &user.given_name);
    put(&mut name, "familyName", &user.family_name);
    put(&mut name, "formatted", &scim.formatted_name);
    if !name.is_empty() {
        out.insert("name".into(), Value::Object(name));
    }
    put(&mut out, "displayName", &user.display_name);
    put(&mut out, "title", &scim.title);
    if !scim.emails.is_empty() {
        let emails: Vec<Value> = scim
            .emails
            .iter()
            .map(|e| {
                let mut m = Map::new();
                m.insert("value".into(), json!(e.value));
                put(&mut m, "type", &e.kind);
                m.insert("primary".into(), json!(e.primary));
                Value::Object(m)
            })
            .collect();
        out.insert("emails".into(), Value::Array(emails));
    }
    if !scim.active_unassigned {
        out.insert(
            "active".into(),
            json!(user.status != UserStatus::Deactivated),
        );
    }
    if enterprise {
        let mut ext = Map::new();
        put(&mut ext, "employeeNumber", &scim.employee_number);
        put(&mut ext, "department", &scim.department);
        out.insert(ENTERPRISE_SCHEMA.into(), Value::Object(ext));
    }
    out.insert(
        "meta".into(),
        meta(
            "User",
            format!("{base}/Users/{}", user.id),
            user.created_at,
            user.updated_at,
        ),
    );
    Value::Object(out)
}

/// The Group resource of a team; `members` absent when not asked for.
pub fn group_json(team: &Team, members: Option<&[String]>, base: &str) -> Value {
    let mut out = Map::new();
    out.insert("schemas".into(), json!([GROUP_SCHEMA]));
    out.insert("id".into(), json!(team.id));
    if let Some(ext) = team.scim.as_ref().and_then(|s| s.external_id.clone()) {
        out.insert("externalId".into(), json!(ext));
    }
    out.insert("displayName".into(), json!(team.shown_name()));
    if let Some(members) = members {
        let list: Vec<Value> = members
            .iter()
            .map(|id| json!({ "value": id, "$ref": format!("{base}/Users/{id}"), "type": "User" }))
            .collect();
        out.insert("members".into(), Value::Array(list));
    }
    out.insert(
        "meta".into(),
        meta(
            "Group",
            format!("{base}/Groups/{}", team.id),
            team.created_at,
            team.updated_at,
        ),
    );
    Value::Object(out)
}

/// A Group as a client sent it.
#[derive(Debug, Clone, PartialEq)]
pub struct GroupInput {
    pub display_name: String,
    pub external_id: Option<String>,
    /// Member values (user ids), in the order sent; `None` when absent.
    pub members: Option<Vec<MemberRef>>,
}

/// One `members` entry.
#[derive(Debug, Clone, PartialEq)]
pub struct MemberRef {
    pub value: String,
    /// `type` as sent (`User`, `Group`).
    pub kind: Option<String>,
}

/// Reads a `members` list (`[{value, type?, display?, $ref?}]`).
pub fn member_refs(value: &Value) -> Result<Vec<MemberRef>, ScimError> {
    let items: Vec<&Value> = match value {
        Value::Array(items) => items.iter().collect(),
        Value::Object(_) => vec![value],
        Value::Null => Vec::new(),
        other => {
            return Err(ScimError::InvalidValue(format!(
                "members must be a list of {{\"value\": id}}, not {other}"
            )))
        }
    };
    if items.len() > 10_000 {
        return Err(ScimError::InvalidValue(
            "at most 10000 members per request".into(),
        ));
    }
    items
        .into_iter()
        .map(|item| {
            let value = string(get_ci(item, "value"), "members.value")?.ok_or_else(|| {
                ScimError::InvalidValue("every member needs a \"value\" (a user id)".into())
            })?;
            Ok(MemberRef {
                value,
                kind: string(get_ci(item, "type"), "members.type")?,
            })
        })
        .collect()
}

impl GroupInput {
    /// Reads a Group resource.
    pub fn from_json(body: &Value) -> Result<GroupInput, ScimError> {
        if !body.is_object() {
            return Err(ScimError::InvalidSyntax(
                "a Group resource must be a JSON object".into(),
            ));
        }
        let display_name = string(get_ci(body, "displayName"), "displayName")?
            .ok_or_else(|| ScimError::InvalidValue("displayName is required".into()))?;
        Ok(GroupInput {
            display_name,
            external_id: string(get_ci(body, "externalId"), "externalId")?,
            members: get_ci(body, "members").map(member_refs).transpose()?,
        })
    }
}

// ------------------------------------------------------------ projection

fn parse_list(list: &str) -> Result<Vec<AttrPath>, ScimError> {
    list.split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(|a| {
            parse_attr_path(a)
                .map_err(|e| ScimError::InvalidValue(format!("attributes/excludedAttributes: {e}")))
        })
        .collect()
}

/// `attributes` / `excludedAttributes` of a request.
#[derive(Debug, Clone, Default)]
pub struct Projection {
    pub attributes: Vec<AttrPath>,
    pub excluded: Vec<AttrPath>,
}

/// Attributes returned whatever `attributes` says (`returned: always`).
const ALWAYS: [&str; 3] = ["id", "schemas", "meta"];

impl Projection {
    /// Parses the two comma-separated lists.
    pub fn parse(
        attributes: Option<&str>,
        excluded: Option<&str>,
    ) -> Result<Projection, ScimError> {
        Ok(Projection {
            attributes: attributes.map(parse_list).transpose()?.unwrap_or_default(),
            excluded: excluded.map(parse_list).transpose()?.unwrap_or_default(),
        })
    }

    /// Whether `members` is left out (so it need not be read at all).
    pub fn excludes_members(&self) -> bool {
        let named = |p: &AttrPath| p.name.eq_ignore_ascii_case("members") && p.sub.is_none();
        self.excluded.iter().any(named)
            || (!self.attributes.is_empty()
                && !self
                    .attributes
                    .iter()
                    .any(|p| p.name.eq_ignore_ascii_case("members")))
    }

    /// Applies the projection to a resource.
    pub fn apply(&self, resource: Value) -> Value {
        let Value::Object(map) = resource else {
            return resource;
        };
        let keep_key = |key: &str, sub: Option<&str>| -> bool {
            if ALWAYS.iter().any(|a| a.eq_ignore_ascii_case(key)) && sub.is_none() {
                return true;
            }
            let matches = |p: &AttrPath| {
                let (urn_match, name_match) = match &p.urn {
                    Some(urn)
                        if !urn.eq_ignore_ascii_case(USER_SCHEMA)
                            && !urn.eq_ignore_ascii_case(GROUP_SCHEMA) =>
                    {
                        (urn.eq_ignore_ascii_case(key), true)
                    }
                    _ => (true, p.name.eq_ignore_ascii_case(key)),
                };
                urn_match && name_match
            };
            if self
                .excluded
                .iter()
                .any(|p| matches(p) && p.sub.is_none() && sub.is_none())
            {
                return false;
            }
            self.attributes.is_empty() || self.attributes.iter().any(matches)
        };
        let mut out = Map::new();
        for (key, value) in map {
            if !keep_key(&key, None) {
                continue;
            }
            // Sub-attribute selection (`name.givenName`): keep only the named ones.
            let subs: Vec<&str> = self
                .attributes
                .iter()
                .filter(|p| p.name.eq_ignore_ascii_case(&key) && p.urn.is_none())
                .filter_map(|p| p.sub.as_deref())
                .collect();
            let excluded_subs: Vec<&str> = self
                .excluded
                .iter()
                .filter(|p| p.name.eq_ignore_ascii_case(&key) && p.urn.is_none())
                .filter_map(|p| p.sub.as_deref())
                .collect();
            let whole = self.attributes.is_empty()
                || self
                    .attributes
                    .iter()
                    .any(|p| p.name.eq_ignore_ascii_case(&key) && p.sub.is_none())
                || ALWAYS.iter().any(|a| a.eq_ignore_ascii_case(&key));
            let trim = |v: &Value| -> Value {
                match v {
                    Value::Object(m) => Value::Object(
                        m.iter()
                            .filter(|(k, _)| {
                                (whole || subs.iter().any(|s| s.eq_ignore_ascii_case(k)))
                                    && !excluded_subs.iter().any(|s| s.eq_ignore_ascii_case(k))
                            })
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect(),
                    ),
                    other => other.clone(),
                }
            };
            let value = match &value {
                Value::Array(items) => Value::Array(items.iter().map(trim).collect()),
                Value::Object(_) => trim(&value),
                _ => value,
            };
            out.insert(key, value);
        }
        Value::Object(out)
    }
}

// ------------------------------------------------------------ discovery

/// `ServiceProviderConfig`: what is supported, truthfully.
/// The largest accepted request body is not a key here (RFC 7643 §5 defines none): it is
/// sent as the `Gatehouse-Scim-Max-Request-Bytes` response header (decision 55).
pub fn service_provider_config(base: &str, max_results: usize) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig"],
        "patch": { "supported": true },
        "bulk": { "supported": false, "maxOperations": 0, "maxPayloadSize": 0 },
        "filter": { "supported": true, "maxResults": max_results },
        "changePassword": { "supported": false },
        "sort": { "supported": true },
        "etag": { "supported": true },
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "The SCIM token of the SSO configuration, sent as Authorization: Bearer <token>",
            "primary": true
        }],
        "meta": {
            "resourceType": "ServiceProviderConfig",
            "location": format!("{base}/ServiceProviderConfig"),
        },
    })
}

/// The `ResourceTypes` (User with the enterprise extension, Group).
pub fn resource_types(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "User", "name": "User", "endpoint": "/Users",
            "description": "A Gatehouse user",
            "schema": USER_SCHEMA,
            "schemaExtensions": [{ "schema": ENTERPRISE_SCHEMA, "required": false }],
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User") }
        }),
        json!({
            "schemas": ["urn:ietf:params:scim:schemas:core:2.0:ResourceType"],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "description": "A Gatehouse team",
            "schema": GROUP_SCHEMA,
            "schemaExtensions": [],
            "meta": { "resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group") }
        }),
    ]
}

/// `attribute` with one more characteristic (`referenceTypes`, `canonicalValues`).
fn with(mut attribute: Value, key: &str, value: Value) -> Value {
    attribute[key] = value;
    attribute
}

#[allow(clippy::too_many_arguments)] // one row of the schema table
fn attr(
    name: &str,
    kind: &str,
    multi: bool,
    required: bool,
    mutability: &str,
    uniqueness: &str,
    case_exact: bool,
    description: &str,
) -> Value {
    json!({
        "name": name, "type": kind, "multiValued": multi, "description": description,
        "required": required, "caseExact": case_exact, "mutability": mutability,
        "returned": "default", "uniqueness": uniqueness,
    })
}

fn complex(name: &str, multi: bool, description: &str, subs: Vec<Value>) -> Value {
    let mut a = attr(
        name,
        "complex",
        multi,
        false,
        "readWrite",
        "none",
        false,
        description,
    );
    a["subAttributes"] = Value::Array(subs);
    a
}

/// The `Schemas`: exactly the attributes Gatehouse stores.
pub fn schemas(base: &str) -> Vec<Value> {
    let s = |n: &str, d: &str| attr(n, "string", false, false, "readWrite", "none", false, d);
    let user = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": USER_SCHEMA, "name": "User", "description": "User account",
        "attributes": [
            attr("userName", "string", false, true, "readWrite", "server", false, "Unique per connection; the user's email when it is an address"),
            complex("name", false, "The user's name", vec![s("givenName", "Given name"), s("familyName", "Family name"), s("formatted", "Full name")]),
            s("displayName", "Name shown in Gatehouse"),
            s("title", "Job title"),
            complex("emails", true, "Email addresses; the primary (or first) is the user's email when userName is not one", vec![
                s("value", "Address"), s("type", "work, home, other"),
                attr("primary", "boolean", false, false, "readWrite", "none", false, "The primary address"),
            ]),
            attr("active", "boolean", false, false, "readWrite", "none", false, "false deactivates the user (access revoked, history kept)"),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{USER_SCHEMA}") }
    });
    let enterprise = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": ENTERPRISE_SCHEMA, "name": "EnterpriseUser", "description": "Enterprise User (subset)",
        "attributes": [s("employeeNumber", "Employee number"), s("department", "Department")],
        "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{ENTERPRISE_SCHEMA}") }
    });
    let group = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:Schema"],
        "id": GROUP_SCHEMA, "name": "Group", "description": "A Gatehouse team",
        "attributes": [
            attr("displayName", "string", false, true, "readWrite", "server", false, "The group's name exactly as sent (1-256 characters, no control characters), unique per connection (case-insensitive); Gatehouse derives the team name from it"),
            complex("members", true, "Members: users only (nested groups are refused)", vec![
                attr("value", "string", false, false, "immutable", "none", true, "User id"),
                with(attr("$ref", "reference", false, false, "immutable", "none", true, "User URI"), "referenceTypes", json!(["User"])),
                with(attr("type", "string", false, false, "immutable", "none", false, "User"), "canonicalValues", json!(["User"])),
            ]),
        ],
        "meta": { "resourceType": "Schema", "location": format!("{base}/Schemas/{GROUP_SCHEMA}") }
    });
    vec![user, enterprise, group]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_accept_entra_and_okta_shapes() {
        let okta = json!({
            "schemas": [USER_SCHEMA], "userName": "ann@acme.io",
            "name": {"givenName": "Ann", "familyName": "Lee"},
            "emails": [{"primary": true, "value": "ann@acme.io", "type": "work"}],
            "displayName": "Ann Lee", "locale": "en-US", "externalId": "00u1", "groups": [],
            "password": "secret", "active": true
        });
        let input = UserInput::from_json(&okta).unwrap();
        assert_eq!(input.email().unwrap().unwrap().as_str(), "ann@acme.io");
        assert_eq!(input.active, Some(true));
        let entra = json!({
            "UserName": "AnnL", "Active": "False",
            "emails": [{"type": "work", "value": "Ann@Acme.io", "primary": "True"}],
            ENTERPRISE_SCHEMA: {"employeeNumber": "7", "Department": "R&D"}
        });
        let input = UserInput::from_json(&entra).unwrap();
        assert_eq!(input.active, Some(false));
        assert_eq!(input.email().unwrap().unwrap().as_str(), "Ann@Acme.io");
        assert_eq!(input.department.as_deref(), Some("R&D"));
        let none = UserInput::from_json(&json!({"userName": "nobody"}))
            .unwrap()
            .email()
            .unwrap();
        assert_eq!(none, None, "a userName alone is a user without an email");
        let err =
            UserInput::from_json(&json!({"userName": "a@b.io", "active": "maybe"})).unwrap_err();
        assert!(
            err.to_string().contains("active must be a boolean"),
            "{err}"
        );
    }

    #[test]
    fn projection_keeps_always_returned_attributes() {
        let resource = json!({"id": "1", "schemas": [], "meta": {}, "userName": "a", "name": {"givenName": "A", "familyName": "B"}, "emails": [{"value": "x", "type": "work"}]});
        let p = Projection::parse(Some("userName,name.givenName"), None).unwrap();
        assert_eq!(
            p.apply(resource.clone()),
            json!({"id": "1", "schemas": [], "meta": {}, "userName": "a", "name": {"givenName": "A"}})
        );
        let p = Projection::parse(None, Some("emails,name.familyName")).unwrap();
        assert_eq!(
            p.apply(resource),
            json!({"id": "1", "schemas": [], "meta": {}, "userName": "a", "name": {"givenName": "A"}})
        );
        assert!(Projection::parse(None, Some("members"))
            .unwrap()
            .excludes_members());
        assert!(Projection::parse(Some("displayName"), None)
            .unwrap()
            .excludes_members());
    }
}
