//! No sequence of admin operations on tenant A changes anything of tenant B.

use gatehouse::app::{App, Caller, Invite, MemberChange, NewTeam, NewToken, TeamPatch, UserQuery};
use gatehouse::config::Config;
use gatehouse_rules::Role;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

#[derive(Debug, Clone)]
enum Op {
    Invite(u8),
    CreateTeam(u8, Option<bool>),
    AddMember(u8, u8),
    RemoveMember(u8, u8),
    TeamRole(u8, Option<bool>),
    ManualRole(u8, Option<bool>),
    Deactivate(u8),
    Reactivate(u8),
    DeleteUser(u8),
    DeleteTeam(u8),
    Token(u8),
    RevokeAll(u8),
    Mode(bool),
}

fn role(admin: Option<bool>) -> Option<Role> {
    admin.map(|a| if a { Role::Admin } else { Role::Member })
}

fn op() -> impl Strategy<Value = Op> {
    let i = 0u8..4;
    prop_oneof![
        i.clone().prop_map(Op::Invite),
        (i.clone(), any::<Option<bool>>()).prop_map(|(t, r)| Op::CreateTeam(t, r)),
        (i.clone(), i.clone()).prop_map(|(t, u)| Op::AddMember(t, u)),
        (i.clone(), i.clone()).prop_map(|(t, u)| Op::RemoveMember(t, u)),
        (i.clone(), any::<Option<bool>>()).prop_map(|(t, r)| Op::TeamRole(t, r)),
        (i.clone(), any::<Option<bool>>()).prop_map(|(u, r)| Op::ManualRole(u, r)),
        i.clone().prop_map(Op::Deactivate),
        i.clone().prop_map(Op::Reactivate),
        i.clone().prop_map(Op::DeleteUser),
        i.clone().prop_map(Op::DeleteTeam),
        i.clone().prop_map(Op::Token),
        i.clone().prop_map(Op::RevokeAll),
        any::<bool>().prop_map(Op::Mode),
    ]
}

/// Everything an operator can read of a tenant.
fn snapshot(app: &App, tenant: &str) -> Value {
    let op = Caller::Operator;
    let users = app
        .users(
            tenant,
            &UserQuery {
                limit: Some(500),
                ..Default::default()
            },
            &op,
        )
        .unwrap()
        .items;
    let tokens: Vec<_> = users
        .iter()
        .map(|u| app.pats(tenant, &u.id, &op).unwrap())
        .collect();
    json!({
        "tenant": app.tenant(tenant).unwrap(),
        "users": users,
        "teams": app.teams(tenant, &op).unwrap(),
        "tokens": tokens,
        "audit": app.audit(tenant, 0, 1000, &op).unwrap().items,
        "outbox": app.outbox(tenant, &op).unwrap(),
    })
}

/// Ids of A's users and teams by slot, looked up at the time of the operation.
fn user_id(app: &App, a: &str, slot: u8) -> String {
    let users = app
        .users(
            a,
            &UserQuery {
                q: Some(format!("u{slot}@")),
                ..Default::default()
            },
            &Caller::Operator,
        )
        .unwrap();
    users
        .items
        .first()
        .map(|u| u.id.clone())
        .unwrap_or_else(|| format!("usr_missing{slot}"))
}

fn team_id(app: &App, a: &str, slot: u8) -> String {
    let name = format!("t{slot}");
    app.teams(a, &Caller::Operator)
        .unwrap()
        .into_iter()
        .find(|t| t.team.name == name)
        .map(|t| t.team.id)
        .unwrap_or_else(|| format!("team_missing{slot}"))
}

fn apply(app: &App, a: &str, op: &Op) {
    let c = &Caller::Operator;
    // Refusals are fine: the property is about tenant B, whatever A's operations do.
    let _ = match op {
        Op::Invite(u) => app
            .invite_user(
                a,
                Invite {
                    email: format!("u{u}@a.io"),
                    send_password_email: *u % 2 == 0,
                    ..Default::default()
                },
                c,
            )
            .map(drop),
        Op::CreateTeam(t, r) => app
            .create_team(
                a,
                NewTeam {
                    name: format!("t{t}"),
                    role: role(*r),
                    members: vec![user_id(app, a, *t)],
                    ..Default::default()
                },
                c,
            )
            .map(drop),
        Op::AddMember(t, u) => app
            .change_members(
                a,
                &team_id(app, a, *t),
                MemberChange {
                    add: vec![user_id(app, a, *u)],
                    remove: vec![],
                },
                false,
                c,
            )
            .map(drop),
        Op::RemoveMember(t, u) => app
            .change_members(
                a,
                &team_id(app, a, *t),
                MemberChange {
                    add: vec![],
                    remove: vec![user_id(app, a, *u)],
                },
                false,
                c,
            )
            .map(drop),
        Op::TeamRole(t, r) => app
            .patch_team(
                a,
                &team_id(app, a, *t),
                TeamPatch {
                    role: Some(role(*r)),
                    ..Default::default()
                },
                c,
            )
            .map(drop),
        Op::ManualRole(u, r) => app
            .set_manual_role(a, &user_id(app, a, *u), role(*r), c)
            .map(drop),
        Op::Deactivate(u) => app
            .set_user_active(a, &user_id(app, a, *u), false, c)
            .map(drop),
        Op::Reactivate(u) => app
            .set_user_active(a, &user_id(app, a, *u), true, c)
            .map(drop),
        Op::DeleteUser(u) => app.delete_user(a, &user_id(app, a, *u), c),
        Op::DeleteTeam(t) => app.delete_team(a, &team_id(app, a, *t), c),
        Op::Token(u) => app
            .create_pat(
                a,
                &user_id(app, a, *u),
                NewToken {
                    name: "t".into(),
                    expires_in_days: None,
                },
                c,
            )
            .map(drop),
        Op::RevokeAll(u) => app.revoke_pats(a, &user_id(app, a, *u), None, c).map(drop),
        Op::Mode(scim) => app
            .set_mode(a, if *scim { "scim" } else { "invite_only" }, c)
            .map(drop),
    };
}

static CASES: AtomicUsize = AtomicUsize::new(0);

/// One app for every case (opening one compiles the default policy); each case uses a
/// fresh pair of tenants.
fn app() -> &'static App {
    static APP: OnceLock<(tempfile::TempDir, App)> = OnceLock::new();
    &APP.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let config = Config {
            data: dir.path().join("db"),
            operator_token: Some(gatehouse_tests::OPERATOR_TOKEN.into()),
            ..Default::default()
        };
        let (app, _) = App::open(&config).unwrap();
        (dir, app)
    })
    .1
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn operations_on_one_tenant_never_touch_another(ops in proptest::collection::vec(op(), 1..25)) {
        let app = app();
        let n = CASES.fetch_add(1, Ordering::Relaxed);
        let (a, b) = (format!("a{n}"), format!("b{n}"));
        for slug in [&a, &b] {
            app.create_tenant_with_admin(slug, Some(&format!("admin@{slug}.io")), "test").unwrap();
        }
        // B has the same shapes A will touch: same emails, same team names.
        for u in 0..4u8 {
            app.invite_user(&b, Invite { email: format!("u{u}@a.io"), ..Default::default() }, &Caller::Operator).unwrap();
        }
        app.create_team(&b, NewTeam { name: "t0".into(), role: Some(Role::Admin), ..Default::default() }, &Caller::Operator).unwrap();
        let before = snapshot(app, &b);
        for op in &ops {
            apply(app, &a, op);
        }
        prop_assert_eq!(snapshot(app, &b), before);
    }
}
