//! [`Backend`] on PostgreSQL: one table `kv(space, key, value)`, transactions at
//! `SERIALIZABLE`, and the cross-replica tenant lock as a row lock (decisions 50–52).
//!
//! The store is synchronous and is called from tokio worker threads, blocking threads and
//! plain threads alike. The sync `postgres` crate cannot be used from inside a tokio
//! runtime (it runs its own and would panic), so the backend owns a small runtime of its
//! own that drives `tokio-postgres` connections; a caller hands it one future at a time and
//! waits on a plain channel, the way a sled caller waits on an fsync.

use super::{Backend, BackendFail, HeldLock, Space, StoreError, TxBody, TxFail, Txn};
use std::future::Future;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls, Statement};

/// The newest schema this binary knows; a database with a newer one is refused.
pub const SCHEMA_VERSION: i32 = 1;

/// Schema migrations, in order: migration `i` brings the schema to version `i + 1`.
/// Plain SQL that PostgreSQL 13+ runs (no advisory locks, no serial ordering).
const MIGRATIONS: &[&str] = &[
    // 1: the key-value table and the tenant lock rows.
    "CREATE TABLE kv (
         space text NOT NULL,
         key bytea NOT NULL,
         value bytea NOT NULL,
         PRIMARY KEY (space, key)
     );
     CREATE TABLE tenant_locks (slug text PRIMARY KEY);",
];

/// Rows fetched per round trip of a scan.
const SCAN_PAGE: i64 = 512;

/// How often a transaction that lost a serialization race is run again.
const MAX_ATTEMPTS: u32 = 64;

/// Why a statement inside a transaction failed.
pub struct PgFail(tokio_postgres::Error);

impl PgFail {
    fn retryable(&self) -> bool {
        is_retryable(&self.0)
    }

    pub(super) fn into_store_error(self) -> StoreError {
        store_error(&self.0)
    }
}

fn is_retryable(e: &tokio_postgres::Error) -> bool {
    // A unique violation on `kv` can only be two transactions inserting one new key at
    // once (every put is an upsert); PostgreSQL may report that race as 23505 rather
    // than 40001, and a new run of the body sees the other's row.
    matches!(
        e.code(),
        Some(&SqlState::T_R_SERIALIZATION_FAILURE)
            | Some(&SqlState::T_R_DEADLOCK_DETECTED)
            | Some(&SqlState::UNIQUE_VIOLATION)
    )
}

/// A database error as a store error: a lost connection or a server that does not answer
/// is `Unavailable` (the caller may try again later), anything else is `Io`.
fn store_error(e: &tokio_postgres::Error) -> StoreError {
    match e.as_db_error() {
        Some(db) if !is_unavailable_code(db.code()) => {
            StoreError::Io(format!("database: {}", db.message()))
        }
        Some(db) => StoreError::Unavailable(format!("database: {}", db.message())),
        None => StoreError::Unavailable(format!("database unreachable: {e}")),
    }
}

fn is_unavailable_code(code: &SqlState) -> bool {
    // Class 08 (connection), 57P0x (shutdown, crash, cannot connect now), 53 (resources),
    // 25006 (read-only transaction: we reached a standby).
    let code = code.code();
    code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") || code == "25006"
}

/// The PostgreSQL settings of a store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// Most connections this process opens for data (tenant locks have their own).
    pub max_connections: usize,
    /// Longest a caller waits for a free connection or a connect.
    pub wait: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            max_connections: 16,
            wait: Duration::from_secs(5),
        }
    }
}

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    get: Statement,
    put: Statement,
    del: Statement,
    scan: Statement,
}

impl Conn {
    async fn open(
        config: &tokio_postgres::Config,
        handle: &tokio::runtime::Handle,
    ) -> Result<Conn, tokio_postgres::Error> {
        let client = connect(config, handle).await?;
        let get = client
            .prepare("SELECT value FROM kv WHERE space = $1 AND key = $2")
            .await?;
        let put = client
            .prepare(
                "INSERT INTO kv (space, key, value) VALUES ($1, $2, $3)
                 ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value",
            )
            .await?;
        let del = client
            .prepare("DELETE FROM kv WHERE space = $1 AND key = $2")
            .await?;
        let scan = client
            .prepare(
                "SELECT key, value FROM kv WHERE space = $1 AND key >= $2
                 AND ($3::bytea IS NULL OR key > $3) AND ($4::bytea IS NULL OR key < $4)
                 ORDER BY key LIMIT $5",
            )
            .await?;
        Ok(Conn {
            client,
            get,
            put,
            del,
            scan,
        })
    }
}

/// A plain connection, driven on `handle`.
async fn connect(
    config: &tokio_postgres::Config,
    handle: &tokio::runtime::Handle,
) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    handle.spawn(async move {
        if let Err(e) = connection.await {
            tracing::warn!(error = %e, "database connection closed");
        }
    });
    Ok(client)
}

/// A bounded set of connections, opened on demand.
struct Pool {
    config: tokio_postgres::Config,
    max: usize,
    wait: Duration,
    state: Mutex<PoolState>,
    freed: Condvar,
}

#[derive(Default)]
struct PoolState {
    idle: Vec<Arc<Conn>>,
    open: usize,
}

/// A connection taken from a pool; back to the pool when dropped, unless it broke.
struct Lease<'a> {
    pool: &'a Pool,
    conn: Option<Arc<Conn>>,
}

impl Lease<'_> {
    fn conn(&self) -> &Arc<Conn> {
        self.conn.as_ref().expect("a lease holds its connection")
    }
}

impl Lease<'_> {
    /// Closes the connection instead of putting it back (its state is unknown).
    fn discard(mut self) {
        self.conn = None;
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        let conn = self.conn.take();
        let mut state = self
            .pool
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match conn {
            Some(conn) if !conn.client.is_closed() => state.idle.push(conn),
            _ => state.open -= 1,
        }
        drop(state);
        self.pool.freed.notify_one();
    }
}

/// The PostgreSQL backend.
pub struct PgBackend {
    runtime: Option<tokio::runtime::Runtime>,
    handle: tokio::runtime::Handle,
    data: Pool,
    locks: Pool,
}

impl Drop for PgBackend {
    fn drop(&mut self) {
        // Dropping a runtime blocks; the store may be dropped inside another runtime.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

impl PgBackend {
    /// Connects to the database at `url` (a `postgres://` URL or key-value string; several
    /// hosts and `target_session_attrs=read-write` find the primary) and brings its schema
    /// to [`SCHEMA_VERSION`], under a row lock so replicas starting together don't race.
    pub fn open(url: &str, options: &PgOptions) -> Result<PgBackend, StoreError> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| StoreError::Io(format!("the database URL is not valid: {e}")))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        if config.get_application_name().is_none() {
            config.application_name("gatehouse");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("gatehouse-pg")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Io(format!("cannot start the database runtime: {e}")))?;
        let handle = runtime.handle().clone();
        let pool = |max| Pool {
            config: config.clone(),
            max,
            wait: options.wait,
            state: Mutex::default(),
            freed: Condvar::new(),
        };
        let backend = PgBackend {
            runtime: Some(runtime),
            handle,
            data: pool(options.max_connections.max(1)),
            locks: pool(options.max_connections.max(1)),
        };
        backend.migrate()?;
        Ok(backend)
    }

    /// Runs `future` on the backend's runtime and waits for it.
    fn run<T: Send + 'static>(
        &self,
        future: impl Future<Output = T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.handle.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| StoreError::Unavailable("the database runtime stopped".into()))
    }

    fn lease<'a>(&'a self, pool: &'a Pool) -> Result<Lease<'a>, StoreError> {
        let deadline = std::time::Instant::now() + pool.wait;
        let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            while let Some(conn) = state.idle.pop() {
                if conn.client.is_closed() {
                    state.open -= 1;
                    continue;
                }
                return Ok(Lease {
                    pool,
                    conn: Some(conn),
                });
            }
            if state.open < pool.max {
                state.open += 1;
                drop(state);
                let config = pool.config.clone();
                let handle = self.handle.clone();
                let opened = self
                    .run(async move { Conn::open(&config, &handle).await })
                    .and_then(|r| r.map_err(|e| store_error(&e)));
                return match opened {
                    Ok(conn) => Ok(Lease {
                        pool,
                        conn: Some(Arc::new(conn)),
                    }),
                    Err(e) => {
                        let mut state = pool.state.lock().unwrap_or_else(PoisonError::into_inner);
                        state.open -= 1;
                        drop(state);
                        pool.freed.notify_one();
                        Err(e)
                    }
                };
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return Err(StoreError::Unavailable(format!(
                    "all {} database connections are busy",
                    pool.max
                )));
            }
            state = pool
                .freed
                .wait_timeout(state, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Runs `sql` (several statements allowed) on a leased connection.
    fn batch(&self, conn: &Arc<Conn>, sql: &'static str) -> Result<(), StoreError> {
        let conn = conn.clone();
        self.run(async move { conn.client.batch_execute(sql).await })?
            .map_err(|e| store_error(&e))
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let (config, handle) = (self.data.config.clone(), self.handle.clone());
        let outcome = self.run(async move {
            // Its own connection: the pool's prepare statements on tables made here.
            let client = connect(&config, &handle).await?;
            // The lock row's table; two replicas creating it at once may collide on the
            // catalog's unique index (23505) or on its row type ("type … already exists",
            // 42710), and the loser finds the table there on the next try.
            for attempt in 0.. {
                let created = client
                    .batch_execute(
                        "CREATE TABLE IF NOT EXISTS gatehouse_schema (
                             id int PRIMARY KEY CHECK (id = 1),
                             version int NOT NULL
                         );
                         INSERT INTO gatehouse_schema (id, version) VALUES (1, 0)
                         ON CONFLICT (id) DO NOTHING;",
                    )
                    .await;
                match created {
                    Ok(()) => break,
                    Err(e)
                        if attempt < 5
                            && matches!(
                                e.code(),
                                Some(&SqlState::UNIQUE_VIOLATION)
                                    | Some(&SqlState::DUPLICATE_TABLE)
                                    | Some(&SqlState::DUPLICATE_OBJECT)
                            ) => {}
                    Err(e) => return Err(e),
                }
            }
            // Every migration runs in one transaction holding the lock row: a second
            // replica waits here, then finds the schema current.
            client.batch_execute("BEGIN").await?;
            let row = client
                .query_one(
                    "SELECT version FROM gatehouse_schema WHERE id = 1 FOR UPDATE",
                    &[],
                )
                .await?;
            let found: i32 = row.get(0);
            if found > SCHEMA_VERSION {
                client.batch_execute("ROLLBACK").await?;
                return Ok(Err(found));
            }
            for (i, sql) in MIGRATIONS.iter().enumerate().skip(found.max(0) as usize) {
                client.batch_execute(sql).await?;
                client
                    .execute(
                        "UPDATE gatehouse_schema SET version = $1 WHERE id = 1",
                        &[&(i as i32 + 1)],
                    )
                    .await?;
            }
            client.batch_execute("COMMIT").await?;
            Ok(Ok(found))
        })?;
        match outcome {
            Ok(Ok(found)) => {
                if found < SCHEMA_VERSION {
                    tracing::info!(
                        from = found,
                        to = SCHEMA_VERSION,
                        "database schema migrated"
                    );
                }
                Ok(())
            }
            Ok(Err(found)) => Err(StoreError::Io(format!(
                "the database's schema is version {found}, newer than this binary's \
                 {SCHEMA_VERSION}: run a Gatehouse release that knows it (replicas of \
                 different releases can share a database only while they agree on the schema)"
            ))),
            Err(e) => Err(store_error(&e)),
        }
    }

    /// Takes the cross-replica lock of tenant `slug`: a row lock held by an open
    /// transaction on a connection of its own until the guard drops.
    pub fn lock_tenant(&self, slug: &str) -> Result<PgTenantLock<'_>, StoreError> {
        let lease = self.lease(&self.locks)?;
        let conn = lease.conn().clone();
        let slug = slug.to_owned();
        let taken = self.run(async move {
            let client = &conn.client;
            client
                .execute(
                    "INSERT INTO tenant_locks (slug) VALUES ($1) ON CONFLICT (slug) DO NOTHING",
                    &[&slug],
                )
                .await?;
            client.batch_execute("BEGIN").await?;
            client
                .query_one(
                    "SELECT 1 FROM tenant_locks WHERE slug = $1 FOR UPDATE",
                    &[&slug],
                )
                .await?;
            Ok::<_, tokio_postgres::Error>(())
        })?;
        match taken {
            Ok(()) => Ok(PgTenantLock {
                backend: self,
                lease: Some(lease),
            }),
            Err(e) => {
                self.rollback(lease);
                Err(store_error(&e))
            }
        }
    }

    /// Rolls back the lease's transaction; a connection that cannot is closed.
    fn rollback(&self, lease: Lease<'_>) {
        if self.batch(lease.conn(), "ROLLBACK").is_err() {
            lease.discard();
        }
    }
}

/// A held tenant lock; released (the transaction rolled back) when dropped.
pub struct PgTenantLock<'a> {
    backend: &'a PgBackend,
    lease: Option<Lease<'a>>,
}

impl Drop for PgTenantLock<'_> {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            if self.backend.batch(lease.conn(), "ROLLBACK").is_err() {
                // A connection that may still hold the lock must not be reused.
                lease.discard();
            }
        }
    }
}

fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

struct PgTxn<'a> {
    backend: &'a PgBackend,
    conn: &'a Arc<Conn>,
}

enum Op {
    Get,
    Put(Vec<u8>),
    Remove,
}

impl PgTxn<'_> {
    fn exec(&self, op: Op, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        let conn = self.conn.clone();
        let key = key.to_vec();
        let outcome = self
            .backend
            .run(async move {
                let (client, name) = (&conn.client, space.name());
                match op {
                    Op::Get => client
                        .query_opt(&conn.get, &[&name, &key])
                        .await
                        .map(|row| row.map(|row| row.get::<_, Vec<u8>>(0))),
                    Op::Put(value) => client
                        .execute(&conn.put, &[&name, &key, &value])
                        .await
                        .map(|_| None),
                    Op::Remove => client
                        .execute(&conn.del, &[&name, &key])
                        .await
                        .map(|_| None),
                }
            })
            .map_err(|e| TxFail::Backend(BackendFail::Unavailable(e)))?;
        outcome.map_err(|e| TxFail::Backend(BackendFail::Pg(PgFail(e))))
    }
}

impl Txn for PgTxn<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        self.exec(Op::Get, space, key)
    }
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
        self.exec(Op::Put(value.to_vec()), space, key).map(drop)
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
        self.exec(Op::Remove, space, key).map(drop)
    }
}

impl Backend for PgBackend {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let lease = self.lease(&self.data)?;
        let conn = lease.conn().clone();
        let key = key.to_vec();
        self.run(async move {
            conn.client
                .query_opt(&conn.get, &[&space.name(), &key])
                .await
                .map(|row| row.map(|row| row.get::<_, Vec<u8>>(0)))
        })?
        .map_err(|e| store_error(&e))
    }

    fn scan_each(
        &self,
        space: Space,
        prefix: &[u8],
        after: Option<&[u8]>,
        visit: &mut dyn FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let lease = self.lease(&self.data)?;
        let end = prefix_end(prefix);
        let mut cursor: Option<Vec<u8>> = after.filter(|a| *a >= prefix).map(<[u8]>::to_vec);
        loop {
            let conn = lease.conn().clone();
            let (start, above, end) = (prefix.to_vec(), cursor.clone(), end.clone());
            let rows = self
                .run(async move {
                    let rows = conn
                        .client
                        .query(
                            &conn.scan,
                            &[&space.name(), &start, &above, &end, &SCAN_PAGE],
                        )
                        .await?;
                    Ok::<_, tokio_postgres::Error>(
                        rows.into_iter()
                            .map(|row| (row.get::<_, Vec<u8>>(0), row.get::<_, Vec<u8>>(1)))
                            .collect::<Vec<_>>(),
                    )
                })?
                .map_err(|e| store_error(&e))?;
            let full = rows.len() as i64 >= SCAN_PAGE;
            for (key, value) in &rows {
                if !visit(key, value) {
                    return Ok(());
                }
            }
            match rows.last() {
                Some((key, _)) if full => cursor = Some(key.clone()),
                _ => return Ok(()),
            }
        }
    }

    fn transact(&self, body: &TxBody<'_>) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = self.lease(&self.data)?;
            if let Err(e) = self.batch(lease.conn(), "BEGIN ISOLATION LEVEL SERIALIZABLE") {
                lease.discard();
                return Err(e);
            }
            let txn = PgTxn {
                backend: self,
                conn: lease.conn(),
            };
            match body(&txn) {
                Ok(()) => {
                    let conn = lease.conn().clone();
                    let committed =
                        self.run(async move { conn.client.batch_execute("COMMIT").await })?;
                    match committed {
                        Ok(()) => return Ok(()),
                        // A failed COMMIT ends the transaction; a serialization failure
                        // means nothing was written and the body may run again.
                        Err(e) if is_retryable(&e) => drop(lease),
                        // The outcome of a COMMIT whose answer was lost is unknown.
                        Err(e) => {
                            lease.discard();
                            return Err(store_error(&e));
                        }
                    }
                }
                Err(TxFail::Abort(e)) => {
                    self.rollback(lease);
                    return Err(e);
                }
                Err(TxFail::Backend(BackendFail::Pg(fail))) if fail.retryable() => {
                    self.rollback(lease)
                }
                Err(TxFail::Backend(fail)) => {
                    self.rollback(lease);
                    return Err(fail.into_store_error());
                }
            }
            if attempt >= MAX_ATTEMPTS {
                return Err(StoreError::Unavailable(format!(
                    "a transaction lost {MAX_ATTEMPTS} serialization races in a row"
                )));
            }
            // Jittered backoff, growing with the attempts, at most ~50 ms.
            let ceiling = (1u64 << attempt.min(6)) * 800;
            std::thread::sleep(Duration::from_micros(rand::random_range(0..ceiling)));
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        // A COMMIT the server acknowledged is durable (with the server's default
        // `synchronous_commit = on`); there is nothing to flush.
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn lock_tenant(&self, slug: &str) -> Result<Option<Box<dyn HeldLock + '_>>, StoreError> {
        Ok(Some(Box::new(PgBackend::lock_tenant(self, slug)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
