//! `reload`: read the config again and apply what may change while
//! running, on SIGHUP or on the admin op `reload` (`splitsign reload`, the
//! unit's `ExecReload=`, which needs no tool the host may lack). A reload
//! applies every setting or is refused whole, naming the one that needs a
//! restart; the running config stays then.

use std::sync::Mutex;

use super::access::Access;
use super::handler::Handler;
use super::limits::Limits;
use super::systemd;
use crate::config::{Config, Env, Overrides};
use crate::error::{Error, Result};
use crate::keys::jws::Policy;

/// The config the daemon runs with, and the flags it was started with.
pub struct Reloader {
    running: Mutex<Config>,
    overrides: Overrides,
}

impl Reloader {
    pub fn new(running: Config, overrides: Overrides) -> Reloader {
        Reloader {
            running: Mutex::new(running),
            overrides,
        }
    }

    /// The config in force.
    pub fn running(&self) -> Config {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

impl Handler {
    /// Reload (blocking: it reads the config file), telling systemd
    /// (`RELOADING=1` … `READY=1`) and the log. `by` says who asked.
    pub fn reload(&self, by: &str) -> Result<()> {
        systemd::reloading();
        let result = self.apply_reload();
        match &result {
            Ok(()) => {
                tracing::info!(by, "reloaded the config");
                self.manager.wake.notify_one();
                self.reloaded.notify_one();
            }
            Err(e) => {
                tracing::error!(by, error = %crate::error::chain(e), "reload refused; keeping the running config")
            }
        }
        systemd::ready(&self.status_line(None));
        result
    }

    fn apply_reload(&self) -> Result<()> {
        let r = &self.reloader;
        let mut running = r.running.lock().unwrap_or_else(|p| p.into_inner());
        let new = Config::load(&r.overrides, &Env::from_process())?;
        if let Some(key) = running.needs_restart(&new) {
            return Err(Error::Setting {
                key,
                message: "cannot change on reload; restart the daemon".into(),
            });
        }
        self.manager.check_config(&new)?;
        new.check_output_files()?;
        let access = Access::new(&new)?;
        self.set_policies(Policy::new(&new), access);
        self.set_limits(Limits::of(&new));
        if let Some(a) = &self.audit {
            a.set_retention(new.audit.retention, new.audit.keep_free);
        }
        self.manager.set_config(new.clone());
        *running = new;
        Ok(())
    }
}
