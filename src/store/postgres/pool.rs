//! A small pool of blocking PostgreSQL clients. Clients are opened on
//! demand up to a maximum and handed back on drop; one that the server
//! closed (a restart, a dropped connection) is thrown away instead of being
//! handed out again, so the next caller connects afresh.

use std::ops::{Deref, DerefMut};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use ::postgres::{Client, Config, NoTls};

use crate::store::StoreError;

/// How long a caller waits for a free client when all are in use.
const WAIT_FOR_CLIENT: Duration = Duration::from_secs(60);

pub struct Pool {
    config: Config,
    max: usize,
    state: Mutex<State>,
    freed: Condvar,
}

#[derive(Default)]
struct State {
    idle: Vec<Client>,
    /// Clients handed out or being opened.
    busy: usize,
}

impl Pool {
    pub fn new(config: Config, max: usize) -> Self {
        Pool { config, max, state: Mutex::new(State::default()), freed: Condvar::new() }
    }

    /// A client, idle or newly opened; waits while `max` are in use.
    pub fn get(&self) -> Result<Pooled<'_>, StoreError> {
        let mut state = self.state.lock().map_err(|_| StoreError::Poisoned)?;
        loop {
            while let Some(client) = state.idle.pop() {
                if !client.is_closed() {
                    state.busy += 1;
                    return Ok(Pooled { pool: self, client: Some(client) });
                }
            }
            if state.busy < self.max {
                state.busy += 1;
                drop(state);
                // Connect outside the lock: it may take the connect timeout.
                return match self.config.connect(NoTls) {
                    Ok(client) => Ok(Pooled { pool: self, client: Some(client) }),
                    Err(e) => {
                        self.give_back(None);
                        Err(StoreError::Postgres(e))
                    }
                };
            }
            let (next, timeout) = self.freed.wait_timeout(state, WAIT_FOR_CLIENT).map_err(|_| StoreError::Poisoned)?;
            state = next;
            if timeout.timed_out() && state.idle.is_empty() && state.busy >= self.max {
                return Err(StoreError::Internal(format!(
                    "all {} connections to the store's database stayed in use for {}s",
                    self.max,
                    WAIT_FOR_CLIENT.as_secs()
                )));
            }
        }
    }

    /// Drops the idle clients (see `PgStore::connection_lost`); those in use
    /// come back and are checked as usual.
    pub fn drop_idle(&self) {
        let idle = match self.state.lock() {
            Ok(mut state) => std::mem::take(&mut state.idle),
            Err(_) => return,
        };
        drop(idle);
    }

    fn give_back(&self, client: Option<Client>) {
        // A poisoned lock means a panic elsewhere; the client is dropped.
        if let Ok(mut state) = self.state.lock() {
            state.busy = state.busy.saturating_sub(1);
            if let Some(client) = client.filter(|c| !c.is_closed()) {
                state.idle.push(client);
            }
        }
        self.freed.notify_one();
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        // Each client runs its connection on a small runtime of its own,
        // and tokio refuses to drop a runtime on a thread that runs async
        // code: a store dropped there (the last Arc going at the end of an
        // async fn) hands its clients to a plain thread to close.
        let idle = match self.state.get_mut() {
            Ok(state) => std::mem::take(&mut state.idle),
            Err(poisoned) => std::mem::take(&mut poisoned.into_inner().idle),
        };
        if !idle.is_empty() && tokio::runtime::Handle::try_current().is_ok() {
            let _ = std::thread::Builder::new().name("idsync-pg-close".into()).spawn(move || drop(idle));
        }
    }
}

/// A client from the pool, returned to it on drop.
pub struct Pooled<'a> {
    pool: &'a Pool,
    client: Option<Client>,
}

impl Deref for Pooled<'_> {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Present from creation until drop.
        self.client.as_ref().expect("a pooled client is present until dropped")
    }
}

impl DerefMut for Pooled<'_> {
    fn deref_mut(&mut self) -> &mut Client {
        self.client.as_mut().expect("a pooled client is present until dropped")
    }
}

impl Pooled<'_> {
    /// Closes the client instead of handing it back: its connection is
    /// known to be gone even if the client has not noticed yet.
    pub fn discard(mut self) {
        drop(self.client.take());
    }
}

impl Drop for Pooled<'_> {
    fn drop(&mut self) {
        self.pool.give_back(self.client.take());
    }
}
