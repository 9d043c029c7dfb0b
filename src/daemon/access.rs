//! `access` decides who may do what: it maps a peer (uid and primary gid
//! from SO_PEERCRED) to a client policy, and applies that policy to a sign
//! request's claims. User and group names are resolved once, when the
//! config is loaded, from /etc/passwd and /etc/group.

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{Config, PolicyFile};
use crate::error::{Error, Result};
use crate::protocol::{Op, OpName};

/// A client policy, resolved.
#[derive(Debug)]
pub struct ClientPolicy {
    pub name: String,
    uids: Vec<u32>,
    gids: Vec<u32>,
    ops: Vec<OpName>,
    audiences: Option<Vec<String>>,
    forced: Map<String, Value>,
    sub_from_peer: bool,
    claims: Option<Vec<String>>,
    /// Seconds; never above the global max_ttl (checked by config).
    pub max_ttl: Option<u64>,
    pub admin: bool,
    /// Tokens per second per peer uid, and the bucket size.
    pub sign_rate: Option<(f64, f64)>,
}

/// Why a policy refused a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Denial {
    Op(String),
    Claim(String),
    Audience,
}

impl ClientPolicy {
    pub fn sub_from_peer(&self) -> bool {
        self.sub_from_peer
    }

    fn matches(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }

    /// Admin ops need `admin = true` (which grants all of them); the other
    /// ops must be in `ops`.
    pub fn allows(&self, op: &Op) -> Result<(), Denial> {
        let name = op.name();
        let ok = if name.is_admin() {
            self.admin
        } else {
            self.ops.contains(&name)
        };
        if ok {
            Ok(())
        } else {
            Err(Denial::Op(name.as_str().to_owned()))
        }
    }

    /// Apply the policy to a sign request's claims: only allowed names,
    /// then forced claims and `sub` from the peer replace what was sent,
    /// then `aud` must be allowed.
    pub fn apply(&self, claims: &mut Map<String, Value>, peer_name: &str) -> Result<(), Denial> {
        if let Some(allowed) = &self.claims
            && let Some(bad) = claims.keys().find(|k| !allowed.contains(k))
        {
            return Err(Denial::Claim(bad.clone()));
        }
        for (k, v) in &self.forced {
            claims.insert(k.clone(), v.clone());
        }
        if self.sub_from_peer {
            claims.insert("sub".into(), Value::String(peer_name.to_owned()));
        }
        if let Some(allowed) = &self.audiences {
            // A policy with audiences requires one: a token without `aud`
            // (or with an empty list) would be accepted by every service.
            let ok = match claims.get("aud") {
                Some(Value::String(a)) => allowed.contains(a),
                Some(Value::Array(list)) => {
                    !list.is_empty()
                        && list
                            .iter()
                            .all(|a| a.as_str().is_some_and(|a| allowed.iter().any(|x| x == a)))
                }
                _ => false,
            };
            if !ok {
                return Err(Denial::Audience);
            }
        }
        Ok(())
    }
}

/// All policies, resolved, plus the admin uids.
#[derive(Debug)]
pub struct Access {
    policies: Vec<Arc<ClientPolicy>>,
    /// Used when no `[[policy]]` is configured.
    open: Arc<ClientPolicy>,
    /// Implicit policy of admin uids that match no configured policy.
    admin: Arc<ClientPolicy>,
    admin_uids: Vec<u32>,
    names: HashMap<u32, String>,
}

impl Access {
    pub fn new(cfg: &Config) -> Result<Access> {
        let passwd = read_db("/etc/passwd");
        let group = read_db("/etc/group");
        let lookup = |db: &[(String, u32)], name: &str, what: &'static str| {
            db.iter()
                .find(|(n, _)| n == name)
                .map(|(_, id)| *id)
                .ok_or_else(|| Error::Setting {
                    key: what,
                    message: format!("no such {}: {name:?}", &what[7..what.len() - 1]),
                })
        };
        let mut policies = Vec::new();
        for p in &cfg.clients.policies {
            let mut uids = p.uids.clone();
            for u in &p.users {
                uids.push(lookup(&passwd, u, "policy.users")?);
            }
            let mut gids = p.gids.clone();
            for g in &p.groups {
                gids.push(lookup(&group, g, "policy.groups")?);
            }
            policies.push(Arc::new(resolve(p, uids, gids)?));
        }
        let own = rustix::process::geteuid().as_raw();
        let admin_uids = cfg
            .clients
            .admin_uids
            .clone()
            .unwrap_or_else(|| if own == 0 { vec![0] } else { vec![0, own] });
        let everything = |name: &str, admin: bool| ClientPolicy {
            name: name.into(),
            uids: vec![],
            gids: vec![],
            ops: OpName::DEFAULT.to_vec(),
            audiences: None,
            forced: Map::new(),
            sub_from_peer: false,
            claims: None,
            max_ttl: None,
            admin,
            sign_rate: None,
        };
        Ok(Access {
            policies,
            open: Arc::new(everything("default", false)),
            admin: Arc::new(ClientPolicy {
                ops: OpName::ALL.to_vec(),
                ..everything("admin", true)
            }),
            admin_uids,
            names: passwd.into_iter().map(|(n, id)| (id, n)).collect(),
        })
    }

    /// Whether `uid` is an admin uid (it may take the reserved connections).
    pub fn is_admin(&self, uid: u32) -> bool {
        self.admin_uids.contains(&uid)
    }

    /// The policy for a peer, or `None`: refuse the connection.
    pub fn for_peer(&self, uid: u32, gid: u32) -> Option<Arc<ClientPolicy>> {
        let is_admin = self.admin_uids.contains(&uid);
        if let Some(p) = self.policies.iter().find(|p| p.matches(uid, gid)) {
            if is_admin && !p.admin {
                // An admin uid keeps its admin ops even if a client policy
                // matches its group.
                return Some(Arc::clone(&self.admin));
            }
            return Some(Arc::clone(p));
        }
        if is_admin {
            Some(Arc::clone(&self.admin))
        } else if self.policies.is_empty() {
            Some(Arc::clone(&self.open))
        } else {
            None
        }
    }

    /// The peer's user name for `sub_from_peer` (the uid in decimal if the
    /// uid has no name).
    pub fn user_name(&self, uid: u32) -> String {
        self.names
            .get(&uid)
            .cloned()
            .unwrap_or_else(|| uid.to_string())
    }
}

fn resolve(p: &PolicyFile, uids: Vec<u32>, gids: Vec<u32>) -> Result<ClientPolicy> {
    let forced = serde_json::to_value(&p.forced_claims)
        .ok()
        .and_then(|v| v.as_object().cloned())
        .ok_or_else(|| Error::Setting {
            key: "policy.forced_claims",
            message: format!("policy {:?}: not representable as JSON", p.name),
        })?;
    Ok(ClientPolicy {
        name: p.name.clone(),
        uids,
        gids,
        // Names were checked with the config; admin ops need `admin`.
        ops: match &p.ops {
            None => OpName::DEFAULT.to_vec(),
            Some(names) => names.iter().filter_map(|n| OpName::parse(n)).collect(),
        },
        audiences: p.audiences.clone(),
        forced,
        sub_from_peer: p.sub_from_peer,
        claims: p.claims.clone(),
        max_ttl: p.max_ttl.map(|d| d.as_secs()),
        admin: p.admin,
        sign_rate: p.sign_rate.map(|r| {
            let burst = p.sign_burst.map_or(r.ceil().max(1.0), f64::from);
            (r, burst)
        }),
    })
}

/// `name:x:id:…` lines of /etc/passwd or /etc/group (bounded; unreadable
/// means empty, and names then fail to resolve with a clear error).
fn read_db(path: &str) -> Vec<(String, u32)> {
    use std::io::Read;
    let mut text = String::new();
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.take(16 * 1024 * 1024).read_to_string(&mut text);
    }
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let name = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            Some((name.to_owned(), id))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(toml: &str) -> Access {
        Access::new(&Config::from_toml(toml).unwrap()).unwrap()
    }

    #[test]
    fn no_policy_lets_everyone_use_the_plain_ops() {
        let a = access("");
        let p = a.for_peer(4242, 4242).unwrap();
        assert!(p.allows(&Op::Ping).is_ok());
        assert!(p.allows(&Op::Reshare).is_err());
        assert!(a.for_peer(0, 0).unwrap().allows(&Op::Reshare).is_ok());
    }

    #[test]
    fn peers_matching_no_policy_are_refused() {
        let a = access("[[policy]]\nname = \"web\"\nuids = [1000]\n");
        assert!(a.for_peer(1000, 5).is_some());
        assert!(a.for_peer(1001, 5).is_none());
        assert!(a.for_peer(0, 0).is_some(), "root keeps its admin ops");
    }

    #[test]
    fn claims_are_filtered_forced_and_audiences_checked() {
        let a = access(
            "[[policy]]\nname = \"web\"\ngids = [7]\naudiences = [\"api\"]\nclaims = [\"sub\", \"aud\", \"scope\"]\nforced_claims = { tenant = \"t1\" }\n",
        );
        let p = a.for_peer(1, 7).unwrap();
        let mut m: Map<String, Value> = serde_json::from_str(r#"{"sub":"a","aud":"api"}"#).unwrap();
        p.apply(&mut m, "x").unwrap();
        assert_eq!(m["tenant"], "t1");
        let mut m: Map<String, Value> = serde_json::from_str(r#"{"aud":"admin"}"#).unwrap();
        assert_eq!(p.apply(&mut m, "x"), Err(Denial::Audience));
        let mut m: Map<String, Value> = serde_json::from_str(r#"{"role":"root"}"#).unwrap();
        assert_eq!(p.apply(&mut m, "x"), Err(Denial::Claim("role".into())));
        let mut m: Map<String, Value> = serde_json::from_str(r#"{"tenant":"t2"}"#).unwrap();
        let p2 = access(
            "[[policy]]\nname = \"w\"\nuids = [1]\nforced_claims = { tenant = \"t1\" }\nsub_from_peer = true\n",
        );
        p2.for_peer(1, 1).unwrap().apply(&mut m, "alice").unwrap();
        assert_eq!(m["tenant"], "t1", "forced claims win");
        assert_eq!(m["sub"], "alice");
    }

    #[test]
    fn bad_policies_are_refused_by_config() {
        assert!(Config::from_toml("[[policy]]\nname = \"x\"\n").is_err());
        assert!(Config::from_toml("[[policy]]\nname = \"x\"\nuids=[1]\nops=[\"fly\"]\n").is_err());
        assert!(
            Config::from_toml("[[policy]]\nname = \"x\"\nuids=[1]\nforced_claims={exp=1}\n")
                .is_err()
        );
        let e = Access::new(
            &Config::from_toml("[[policy]]\nname = \"x\"\nusers=[\"no-such-user-here\"]\n")
                .unwrap(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("no-such-user-here"), "{e}");
    }
}
