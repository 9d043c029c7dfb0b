//! `reload`: read the config again and apply what may change while
//! running, on SIGHUP or on the admin op `reload` (`splitsign reload`, the
//! unit's `ExecReload=`, which needs no tool the host may lack). A reload
//! applies every setting or is refused whole, naming the one that needs a
//! restart; the running config stays then.

use crate::config::{Config, Env};
use crate::daemon::access::Access;
use crate::daemon::state::State;
use crate::daemon::systemd;
use crate::error::{Error, Result};
use crate::keys::jws::TokenRules;

/// Reload (blocking: it reads the config file), telling systemd
/// (`RELOADING=1` … `READY=1`) and the log. `by` says who asked.
pub fn reload(st: &State, by: &str) -> Result<()> {
    systemd::reloading();
    let result = apply_reload(st);
    match &result {
        Ok(()) => {
            tracing::info!(by, "reloaded the config");
            st.manager.wake.notify_one();
            st.reloaded.notify_one();
        }
        Err(e) => {
            tracing::error!(by, error = %crate::error::chain(e), "reload refused; keeping the running config")
        }
    }
    systemd::ready(&st.status_line(None));
    result
}

fn apply_reload(st: &State) -> Result<()> {
    let mut running = st.running.lock();
    let new = Config::load(&st.running.overrides, &Env::from_process())?;
    if let Some(key) = running.needs_restart(&new) {
        return Err(Error::Setting {
            key,
            message: "cannot change on reload; restart the daemon".into(),
        });
    }
    st.manager.check_config(&new)?;
    new.check_output_files()?;
    let access = Access::new(&new)?;
    st.set_rules(TokenRules::new(&new.tokens), access);
    st.set_limits(new.limits);
    if let Some(a) = &st.audit {
        a.set_retention(new.audit.retention, new.audit.keep_free);
    }
    st.manager.set_config(new.clone());
    *running = new;
    Ok(())
}
