//! `snapshot` holds a value that readers snapshot and a writer replaces
//! whole: keys, config, policies, revocations. A reader holds the lock only
//! to clone the `Arc`, never while it works (no lock across `.await`, no
//! lock while signing). A poisoned lock still holds a consistent value
//! (every write is a single assignment), so it is used as is.

use std::sync::{Arc, RwLock};

pub struct Shared<T>(RwLock<Arc<T>>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Shared<T> {
        Shared(RwLock::new(Arc::new(value)))
    }

    pub fn get(&self) -> Arc<T> {
        match self.0.read() {
            Ok(g) => Arc::clone(&g),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }

    pub fn set(&self, value: T) {
        let value = Arc::new(value);
        match self.0.write() {
            Ok(mut g) => *g = value,
            Err(p) => *p.into_inner() = value,
        }
    }
}
