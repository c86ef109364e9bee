//! Side tables: the small, often rewritten part of a record kind, kept apart from it.
//!
//! A user's effective role is a few bytes, but a team of 10,000 changing role rewrites it for
//! 10,000 users at once; rewriting 10,000 whole records (and reading them first) is what made
//! that slow. So a space whose records have such a part ([`Space::side`]) keeps it in a side
//! table: each tenant's parts hashed into at most [`BUCKETS`] bucket records. A recomputation
//! then reads and rewrites at most `BUCKETS` small values, whatever the team's size.
//!
//! The side table is authoritative for the part: a record read through the store gets it
//! back from there ([`super::Record::set_side`]); the copy inside the record itself is as of
//! the record's last whole write. A record with no side entry (written before side tables
//! existed) keeps what it has.

use super::{tkey, Space, StoreError};
use std::collections::BTreeMap;

/// Buckets per tenant and side table.
pub const BUCKETS: u32 = 1024;

/// The bucket key (`tenant\0bbb`, three hex digits) of the entry named `entry`.
pub(super) fn bucket_key(tenant: &str, entry: &str) -> Vec<u8> {
    // FNV-1a: stable across builds and platforms (the bucket is part of the key on disk).
    let mut hash: u32 = 0x811c_9dc5;
    for byte in entry.bytes() {
        hash ^= u32::from(byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    let bucket = format!("{:03x}", hash % BUCKETS);
    tkey(tenant, &[bucket.as_bytes()])
}

/// The entry name of a record keyed `parts`.
pub(super) fn entry_name(parts: &[&str]) -> String {
    parts.join("/")
}

/// One bucket: entry name → part, encoded as repeated `[len][name][len][part]` (lengths one
/// byte each), in name order.
#[derive(Default)]
pub(super) struct Bucket(pub BTreeMap<String, Vec<u8>>);

impl Bucket {
    pub(super) fn decode(key: &[u8], bytes: &[u8]) -> Result<Bucket, StoreError> {
        let mut entries = BTreeMap::new();
        let mut bad_name = false;
        Self::each(key, bytes, |name, part| match std::str::from_utf8(name) {
            Ok(name) => {
                entries.insert(name.to_owned(), part.to_vec());
                true
            }
            Err(_) => {
                bad_name = true;
                false
            }
        })?;
        if bad_name {
            return Err(StoreError::Corrupt {
                key: String::from_utf8_lossy(key).replace('\0', "/"),
                reason: "a side entry's name is not UTF-8".into(),
            });
        }
        Ok(Bucket(entries))
    }

    /// The part of entry `name` in an encoded bucket, without decoding the rest.
    pub(super) fn find<'b>(
        key: &[u8],
        bytes: &'b [u8],
        name: &str,
    ) -> Result<Option<&'b [u8]>, StoreError> {
        let mut found = None;
        Self::each(key, bytes, |n, part| {
            if n == name.as_bytes() {
                found = Some(part);
                false
            } else {
                true
            }
        })?;
        Ok(found)
    }

    /// Calls `visit` with each entry's name and part until it returns false.
    fn each<'b>(
        key: &[u8],
        bytes: &'b [u8],
        mut visit: impl FnMut(&'b [u8], &'b [u8]) -> bool,
    ) -> Result<(), StoreError> {
        let corrupt = |reason: &str| StoreError::Corrupt {
            key: String::from_utf8_lossy(key).replace('\0', "/"),
            reason: reason.to_owned(),
        };
        let mut rest = bytes;
        while let Some((&len, tail)) = rest.split_first() {
            let (name, tail) = tail
                .split_at_checked(usize::from(len))
                .ok_or_else(|| corrupt("a side entry's name runs past the end"))?;
            let (&len, tail) = tail
                .split_first()
                .ok_or_else(|| corrupt("a side entry has no part"))?;
            let (part, tail) = tail
                .split_at_checked(usize::from(len))
                .ok_or_else(|| corrupt("a side entry's part runs past the end"))?;
            if !visit(name, part) {
                break;
            }
            rest = tail;
        }
        Ok(())
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.0.iter().map(|(n, p)| n.len() + p.len() + 2).sum());
        for (name, part) in &self.0 {
            out.push(name.len() as u8);
            out.extend_from_slice(name.as_bytes());
            out.push(part.len() as u8);
            out.extend_from_slice(part);
        }
        out
    }
}

/// Checks that a side entry can be encoded (names and parts up to 255 bytes).
pub(super) fn check(space: Space, name: &str, part: &[u8]) {
    assert!(
        name.len() <= 255 && part.len() <= 255,
        "side entry of {} too long: names and parts are server-made and short",
        space.name()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_round_trip_and_refuse_truncation() {
        let mut bucket = Bucket::default();
        bucket.0.insert("usr_1".into(), vec![1, 2, 3]);
        bucket.0.insert("usr_22".into(), vec![]);
        let bytes = bucket.encode();
        let back = Bucket::decode(b"k", &bytes).unwrap();
        assert_eq!(back.0, bucket.0);
        for cut in 1..bytes.len() {
            let decoded = Bucket::decode(b"k", &bytes[..cut]);
            if let Ok(partial) = decoded {
                // A cut on an entry boundary is a shorter, valid bucket.
                assert!(partial.0.len() < bucket.0.len());
            }
        }
    }

    fn user(id: &str) -> crate::identity::User {
        use gatehouse_rules::{Role, RoleSource, UserSource, UserStatus};
        let now = time::OffsetDateTime::UNIX_EPOCH;
        crate::identity::User {
            id: id.into(),
            email: format!("{id}@acme.io"),
            display_name: None,
            given_name: None,
            family_name: None,
            external_id: None,
            status: UserStatus::Active,
            source: UserSource::Invite,
            role: Role::Member,
            role_source: RoleSource::Initial,
            manual_role: None,
            password_hash: None,
            mappings: Vec::new(),
            deactivated_at: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn side_parts_are_read_back_by_get_list_and_page_and_go_with_the_record() {
        use crate::identity::{role_part, User};
        use crate::store::{Batch, Store};
        use gatehouse_rules::{Role, RoleSource};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut batch = Batch::new("acme");
        for id in ["usr_a", "usr_b", "usr_c"] {
            batch.put(&[id], &user(id));
        }
        // Same id in another tenant: its part must stay its own.
        store.apply(&batch).unwrap();
        let mut other = Batch::new("globex");
        other.put(&["usr_a"], &user("usr_a"));
        store.apply(&other).unwrap();

        // Only the side part changes; the record itself is not rewritten.
        let mut batch = Batch::new("acme");
        batch.put_side::<User>(&["usr_b"], role_part(Role::Admin, RoleSource::Group, None));
        batch.put_side::<User>(
            &["usr_a"],
            role_part(Role::Admin, RoleSource::Manual, Some(Role::Admin)),
        );
        // The last write of an entry in a batch wins.
        batch.put_side::<User>(
            &["usr_a"],
            role_part(Role::Member, RoleSource::Manual, Some(Role::Member)),
        );
        store.apply(&batch).unwrap();

        let b: User = store.get("acme", &["usr_b"]).unwrap().unwrap();
        assert_eq!((b.role, b.role_source), (Role::Admin, RoleSource::Group));
        let a: User = store.get("acme", &["usr_a"]).unwrap().unwrap();
        assert_eq!(
            (a.role, a.role_source, a.manual_role),
            (Role::Member, RoleSource::Manual, Some(Role::Member))
        );
        let other_a: User = store.get("globex", &["usr_a"]).unwrap().unwrap();
        assert_eq!(other_a.role_source, RoleSource::Initial);

        let listed: Vec<(String, Role)> = store
            .list::<User>("acme", &[])
            .unwrap()
            .into_iter()
            .map(|u| (u.id, u.role))
            .collect();
        assert_eq!(
            listed,
            [
                ("usr_a".to_owned(), Role::Member),
                ("usr_b".to_owned(), Role::Admin),
                ("usr_c".to_owned(), Role::Member)
            ]
        );
        // A page filters on the part as read back, not on the record's stale copy.
        let (admins, more) = store
            .page::<User>("acme", &[], None, 10, &mut |u| u.role == Role::Admin)
            .unwrap();
        assert_eq!(admins.len(), 1);
        assert_eq!(admins[0].id, "usr_b");
        assert!(!more);

        // Removing the record removes its part; a new record with the same id starts clean.
        let mut batch = Batch::new("acme");
        batch.remove(Space::Users, &["usr_b"]);
        store.apply(&batch).unwrap();
        assert_eq!(
            store
                .sides(Space::UserSides, "acme", &["usr_b", "usr_c"])
                .unwrap(),
            [
                None,
                Some(role_part(Role::Member, RoleSource::Initial, None))
            ]
        );
        assert!(store.get::<User>("acme", &["usr_b"]).unwrap().is_none());
    }

    #[test]
    fn bucket_keys_are_stable_and_spread() {
        assert_eq!(bucket_key("acme", "usr_1"), bucket_key("acme", "usr_1"));
        let buckets: std::collections::HashSet<Vec<u8>> = (0..10_000)
            .map(|i| bucket_key("acme", &format!("usr_{i:08}")))
            .collect();
        assert!(
            buckets.len() > (BUCKETS as usize) * 9 / 10,
            "{}",
            buckets.len()
        );
        assert!(bucket_key("acme", "x").starts_with(b"acme\0"));
    }
}
