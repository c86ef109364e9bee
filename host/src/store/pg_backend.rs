//! [`Backend`] on PostgreSQL: one table `kv(space, key, value)`, transactions at
//! `SERIALIZABLE`, and the cross-replica tenant lock as a row lock (decisions 50–52).
//!
//! The store is synchronous and is called from tokio worker threads, blocking threads and
//! plain threads alike. The sync `postgres` crate cannot be used from inside a tokio
//! runtime (it runs its own and would panic), so the backend owns a small runtime of its
//! own that drives `tokio-postgres` connections; a caller hands it one future at a time and
//! waits on a plain channel, the way a sled caller waits on an fsync.

use super::{Backend, BackendFail, HeldLock, Pairs, Space, StoreError, TxBody, TxFail, Txn};
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
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

/// What every connection sets before it prepares anything (decision 82). Every statement
/// on `kv` reads by key or key range, but a prepared statement runs on a generic plan cached
/// after five executions, planned for the table as it was then: planned while `kv` was
/// small, a sequential scan (or an index scan on `space` alone, filtering keys) looked
/// cheapest and stayed cached as the table grew, costing each read the whole space. With
/// sequential scans off, the planner takes an index path wherever one exists.
const SESSION: &str = "SET enable_seqscan = off";

/// The statements each connection prepares, in [`Conn`]'s field order.
const GET: &str = "SELECT value FROM kv WHERE space = $1 AND key = $2";
/// One primary-key probe per key: `key = ANY($2)` was cached as an index scan on `space`
/// alone with the keys as a filter (decision 82); an equality on the whole key has no such
/// plan. `OFFSET 0` keeps the lateral subquery from being flattened (decision 77).
const GET_MANY: &str = "SELECT s.key, s.value FROM unnest($2::bytea[]) AS p(k)
     CROSS JOIN LATERAL (SELECT key, value FROM kv WHERE space = $1 AND key = p.k OFFSET 0) s";
/// One index range per prefix ([lo, hi)), the lists in the order of the prefixes.
/// `OFFSET 0` keeps the lateral subquery from being flattened into a join: flattened,
/// the planner may read the whole space once and filter it against every range
/// (decision 77).
const SCAN_MANY: &str = "SELECT p.i, s.key, s.value
     FROM unnest($2::bytea[], $3::bytea[]) WITH ORDINALITY AS p(lo, hi, i)
     CROSS JOIN LATERAL (SELECT key, value FROM kv
         WHERE space = $1 AND key >= p.lo AND key < p.hi OFFSET 0) s
     ORDER BY p.i, s.key";
/// Duplicate keys cannot occur: a transaction keeps one write per key.
const PUT_MANY: &str = "INSERT INTO kv (space, key, value)
     SELECT * FROM unnest($1::text[], $2::bytea[], $3::bytea[])
     ON CONFLICT (space, key) DO UPDATE SET value = EXCLUDED.value";
const DEL_MANY: &str = "DELETE FROM kv WHERE (space, key) IN
     (SELECT * FROM unnest($1::text[], $2::bytea[]))";
/// A page of a scan: both bounds are index conditions (a cursor is turned into an
/// inclusive lower bound), so a page costs its own rows, not the pages before it,
/// whatever plan the statement is cached with.
const SCAN: &str = "SELECT key, value FROM kv WHERE space = $1 AND key >= $2 AND key < $3
     ORDER BY key LIMIT $4";
const SCAN_OPEN: &str =
    "SELECT key, value FROM kv WHERE space = $1 AND key >= $2 ORDER BY key LIMIT $3";
const LOCK_ROW: &str = "INSERT INTO tenant_locks (slug) VALUES ($1) ON CONFLICT (slug) DO NOTHING";
const LOCK_TAKE: &str = "SELECT 1 FROM tenant_locks WHERE slug = $1 FOR UPDATE";

/// One connection with its prepared statements.
struct Conn {
    client: Client,
    get: Statement,
    get_many: Statement,
    scan_many: Statement,
    put_many: Statement,
    del_many: Statement,
    scan: Statement,
    scan_open: Statement,
    lock_row: Statement,
    lock_take: Statement,
}

impl Conn {
    async fn open(
        config: &tokio_postgres::Config,
        handle: &tokio::runtime::Handle,
    ) -> Result<Conn, tokio_postgres::Error> {
        let client = connect(config, handle).await?;
        client.batch_execute(SESSION).await?;
        // Prepared in one pipeline: one round trip for all of them.
        let (get, get_many, scan_many, put_many, del_many, scan, scan_open, lock_row, lock_take) =
            tokio::try_join!(
                client.prepare(GET),
                client.prepare(GET_MANY),
                client.prepare(SCAN_MANY),
                client.prepare(PUT_MANY),
                client.prepare(DEL_MANY),
                client.prepare(SCAN),
                client.prepare(SCAN_OPEN),
                client.prepare(LOCK_ROW),
                client.prepare(LOCK_TAKE),
            )?;
        Ok(Conn {
            client,
            get,
            get_many,
            scan_many,
            put_many,
            del_many,
            scan,
            scan_open,
            lock_row,
            lock_take,
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
            // One round trip: the row is made if missing (autocommit), then locked in a
            // transaction of its own, the three statements pipelined.
            let client = &conn.client;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 1] = [&slug];
            let (made, begun, taken) = tokio::join!(
                client.execute(&conn.lock_row, &params),
                client.batch_execute("BEGIN"),
                client.query_one(&conn.lock_take, &params),
            );
            made?;
            begun?;
            taken.map(drop)
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

/// The values of `keys` in `space`, in order, read in one statement.
async fn query_many(
    conn: &Conn,
    space: Space,
    keys: Vec<Vec<u8>>,
) -> Result<Vec<Option<Vec<u8>>>, tokio_postgres::Error> {
    let rows = conn
        .client
        .query(&conn.get_many, &[&space.name(), &keys])
        .await?;
    let found: HashMap<Vec<u8>, Vec<u8>> = rows
        .into_iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect();
    Ok(keys.iter().map(|key| found.get(key).cloned()).collect())
}

/// A transaction's reads go to the database as they come; its writes are kept here and
/// sent at commit in two statements (one upsert, one delete), so a body that writes a
/// thousand keys costs two round trips for them, not a thousand. A read of a key the body
/// wrote answers from the buffer. At `SERIALIZABLE` the outcome is the same as writing
/// each key at once: conflicts are judged at the writes and at `COMMIT`, and a transaction
/// that loses a race runs again from the start.
struct PgTxn<'a> {
    backend: &'a PgBackend,
    conn: &'a Arc<Conn>,
    /// Whether `BEGIN` was sent: it goes with the first read, in the same round trip (the
    /// snapshot is taken at that read either way).
    begun: Cell<bool>,
    /// The last write of each key: `Some(value)` puts, `None` removes.
    writes: RefCell<Writes>,
}

/// A transaction's buffered writes: (space, key) → `Some(value)` put, `None` removed.
type Writes = HashMap<(Space, Vec<u8>), Option<Vec<u8>>>;

/// Where the end of a transaction failed.
enum EndFail {
    /// Sending the buffered writes (the transaction is open and aborted).
    Writes(tokio_postgres::Error),
    /// `COMMIT` itself (the transaction has ended, one way or the other).
    Commit(tokio_postgres::Error),
}

/// Opens a transaction.
const BEGIN: &str = "BEGIN ISOLATION LEVEL SERIALIZABLE";

/// Runs `read` on `conn`, after `BEGIN` in the same round trip when `begin` (pipelined: a
/// failed `BEGIN` fails the read too).
async fn begun_then<T>(
    conn: &Conn,
    begin: bool,
    read: impl Future<Output = Result<T, tokio_postgres::Error>>,
) -> Result<T, tokio_postgres::Error> {
    if !begin {
        return read.await;
    }
    let (begun, read) = tokio::join!(conn.client.batch_execute(BEGIN), read);
    begun?;
    read
}

impl PgTxn<'_> {
    /// Whether this read must send `BEGIN` first (true once).
    fn begin(&self) -> bool {
        !self.begun.replace(true)
    }

    /// Sends the buffered writes and commits, in one hop to the database runtime.
    fn commit(self) -> Result<Result<(), EndFail>, StoreError> {
        let (conn, begin) = (self.conn.clone(), self.begin());
        let mut upsert = (Vec::new(), Vec::new(), Vec::new());
        let mut delete = (Vec::new(), Vec::new());
        for ((space, key), value) in self.writes.into_inner() {
            match value {
                Some(value) => {
                    upsert.0.push(space.name());
                    upsert.1.push(key);
                    upsert.2.push(value);
                }
                None => {
                    delete.0.push(space.name());
                    delete.1.push(key);
                }
            }
        }
        if begin && upsert.0.is_empty() && delete.0.is_empty() {
            return Ok(Ok(()));
        }
        self.backend.run(async move {
            let client = &conn.client;
            // Writes are never pipelined behind a `BEGIN` whose answer is unknown: were it
            // to fail, they would run outside a transaction.
            if begin {
                client.batch_execute(BEGIN).await.map_err(EndFail::Writes)?;
            }
            if !upsert.0.is_empty() {
                client
                    .execute(&conn.put_many, &[&upsert.0, &upsert.1, &upsert.2])
                    .await
                    .map_err(EndFail::Writes)?;
            }
            if !delete.0.is_empty() {
                client
                    .execute(&conn.del_many, &[&delete.0, &delete.1])
                    .await
                    .map_err(EndFail::Writes)?;
            }
            client
                .batch_execute("COMMIT")
                .await
                .map_err(EndFail::Commit)
        })
    }
}

impl Txn for PgTxn<'_> {
    fn get(&self, space: Space, key: &[u8]) -> Result<Option<Vec<u8>>, TxFail> {
        if let Some(value) = self.writes.borrow().get(&(space, key.to_vec())) {
            return Ok(value.clone());
        }
        let (conn, begin) = (self.conn.clone(), self.begin());
        let key = key.to_vec();
        let outcome = self
            .backend
            .run(async move {
                let name = space.name();
                let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&name, &key];
                let read = conn.client.query_opt(&conn.get, &params);
                begun_then(&conn, begin, read)
                    .await
                    .map(|row| row.map(|row| row.get::<_, Vec<u8>>(0)))
            })
            .map_err(|e| TxFail::Backend(BackendFail::Unavailable(e)))?;
        outcome.map_err(|e| TxFail::Backend(BackendFail::Pg(PgFail(e))))
    }
    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, TxFail> {
        let written: Vec<Option<Option<Vec<u8>>>> = {
            let writes = self.writes.borrow();
            keys.iter()
                .map(|key| writes.get(&(space, key.clone())).cloned())
                .collect()
        };
        super::fill_missing(keys, written, |unwritten| {
            let (conn, begin) = (self.conn.clone(), self.begin());
            self.backend
                .run(async move {
                    begun_then(&conn, begin, query_many(&conn, space, unwritten)).await
                })
                .map_err(|e| TxFail::Backend(BackendFail::Unavailable(e)))?
                .map_err(|e| TxFail::Backend(BackendFail::Pg(PgFail(e))))
        })
    }
    fn put(&self, space: Space, key: &[u8], value: &[u8]) -> Result<(), TxFail> {
        self.writes
            .borrow_mut()
            .insert((space, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }
    fn remove(&self, space: Space, key: &[u8]) -> Result<(), TxFail> {
        self.writes.borrow_mut().insert((space, key.to_vec()), None);
        Ok(())
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

    fn get_many(&self, space: Space, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let lease = self.lease(&self.data)?;
        let (conn, keys) = (lease.conn().clone(), keys.to_vec());
        self.run(async move { query_many(&conn, space, keys).await })?
            .map_err(|e| store_error(&e))
    }

    fn scan_many(&self, space: Space, prefixes: &[Vec<u8>]) -> Result<Vec<Pairs>, StoreError> {
        // A prefix with no end (all 0xff bytes) is scanned on its own; none of the store's is.
        let ends: Vec<Option<Vec<u8>>> = prefixes.iter().map(|p| prefix_end(p)).collect();
        if prefixes.is_empty() || ends.iter().any(Option::is_none) {
            return prefixes.iter().map(|p| self.scan(space, p)).collect();
        }
        let lease = self.lease(&self.data)?;
        let (conn, starts) = (lease.conn().clone(), prefixes.to_vec());
        let ends: Vec<Vec<u8>> = ends.into_iter().flatten().collect();
        let rows = self
            .run(async move {
                conn.client
                    .query(&conn.scan_many, &[&space.name(), &starts, &ends])
                    .await
            })?
            .map_err(|e| store_error(&e))?;
        let mut lists: Vec<Pairs> = vec![Vec::new(); prefixes.len()];
        for row in rows {
            let i: i64 = row.get(0);
            let list = usize::try_from(i - 1)
                .ok()
                .and_then(|i| lists.get_mut(i))
                .ok_or_else(|| StoreError::Corrupt {
                    key: format!("scan {}", space.name()),
                    reason: format!("the database answered for prefix {i} of {}", prefixes.len()),
                })?;
            list.push((row.get(1), row.get(2)));
        }
        Ok(lists)
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
        // The lowest key of the next page: the prefix, or just above the last key read.
        let above = |key: &[u8]| [key, &[0u8][..]].concat();
        let mut from: Vec<u8> = match after.filter(|a| *a >= prefix) {
            Some(after) => above(after),
            None => prefix.to_vec(),
        };
        loop {
            let conn = lease.conn().clone();
            let (start, end) = (from.clone(), end.clone());
            let rows = self
                .run(async move {
                    let name = space.name();
                    let rows = match &end {
                        Some(end) => {
                            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                                [&name, &start, end, &SCAN_PAGE];
                            conn.client.query(&conn.scan, &params).await?
                        }
                        None => {
                            conn.client
                                .query(&conn.scan_open, &[&name, &start, &SCAN_PAGE])
                                .await?
                        }
                    };
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
                Some((key, _)) if full => from = above(key),
                _ => return Ok(()),
            }
        }
    }

    fn transact(&self, body: &TxBody<'_>) -> Result<(), StoreError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let lease = self.lease(&self.data)?;
            let txn = PgTxn {
                backend: self,
                conn: lease.conn(),
                begun: Cell::new(false),
                writes: RefCell::default(),
            };
            match body(&txn) {
                Ok(()) => match txn.commit()? {
                    Ok(()) => return Ok(()),
                    // A serialization failure, at the writes or at COMMIT, means nothing
                    // was written and the body may run again.
                    Err(EndFail::Writes(e)) if is_retryable(&e) => self.rollback(lease),
                    Err(EndFail::Commit(e)) if is_retryable(&e) => drop(lease),
                    Err(EndFail::Writes(e)) => {
                        self.rollback(lease);
                        return Err(store_error(&e));
                    }
                    // The outcome of a COMMIT whose answer was lost is unknown.
                    Err(EndFail::Commit(e)) => {
                        lease.discard();
                        return Err(store_error(&e));
                    }
                },
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
    use super::*;
    use crate::store::pg_cluster;

    /// Every statement on `kv`, in the plan a connection caches for it, reads by key: no
    /// sequential scan and no rows filtered after the index, also when the plan was made
    /// while the table was small (decision 82). Each is explained with `force_generic_plan`
    /// (what a prepared statement runs on after five executions) on a table of a few
    /// hundred rows that was never analysed, the state in which the cached plans that read
    /// whole spaces were made.
    #[test]
    fn every_statement_reads_kv_by_key_in_the_plan_a_small_table_gets() {
        let url = pg_cluster::database_url();
        drop(PgBackend::open(&url, &PgOptions::default()).expect("the schema is created"));
        let name = url.rsplit('/').next().unwrap();
        pg_cluster::cluster().psql_in(
            name,
            "INSERT INTO kv SELECT (ARRAY['users','audit','members','scim_index'])[1 + i % 4],
                 decode(md5(i::text), 'hex'), '\\x00'
             FROM generate_series(1, 300) i",
        );
        // Each statement with arguments for `EXECUTE` (any will do: the plan is generic).
        let statements = [
            (GET, "'users', '\\x00'::bytea"),
            (GET_MANY, "'users', ARRAY['\\x00'::bytea]"),
            (
                SCAN_MANY,
                "'users', ARRAY['\\x00'::bytea], ARRAY['\\x01'::bytea]",
            ),
            (
                PUT_MANY,
                "ARRAY['users'], ARRAY['\\x00'::bytea], ARRAY['\\x00'::bytea]",
            ),
            (DEL_MANY, "ARRAY['users'], ARRAY['\\x00'::bytea]"),
            (SCAN, "'users', '\\x00'::bytea, '\\x01'::bytea, 10"),
            (SCAN_OPEN, "'users', '\\x00'::bytea, 10"),
        ];
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let config: tokio_postgres::Config = url.parse().unwrap();
            let client = connect(&config, &tokio::runtime::Handle::current())
                .await
                .unwrap();
            client.batch_execute(SESSION).await.unwrap();
            client
                .batch_execute("SET plan_cache_mode = force_generic_plan")
                .await
                .unwrap();
            for (i, (sql, args)) in statements.iter().enumerate() {
                client
                    .batch_execute(&format!("PREPARE s{i} AS {sql}"))
                    .await
                    .unwrap();
                let plan: Vec<String> = client
                    .simple_query(&format!("EXPLAIN EXECUTE s{i}({args})"))
                    .await
                    .unwrap()
                    .into_iter()
                    .filter_map(|m| match m {
                        tokio_postgres::SimpleQueryMessage::Row(row) => {
                            row.get(0).map(str::to_owned)
                        }
                        _ => None,
                    })
                    .collect();
                let plan = plan.join("\n");
                assert!(
                    !plan.contains("Seq Scan on kv") && !plan.contains("Filter:"),
                    "{sql}\nis planned to read more than its keys:\n{plan}"
                );
            }
        });
    }

    #[test]
    fn a_prefix_ends_at_its_successor() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[b'a', 0xff]), Some(b"b".to_vec()));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
        assert_eq!(prefix_end(b""), None);
    }
}
