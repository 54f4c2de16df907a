//! `/readyz`: named readiness conditions, each a shared flag its owner sets.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// The readiness key of trunk `name`'s registration.
pub fn trunk_ready_key(name: &str) -> String {
    format!("trunk:{name}")
}

/// One readiness condition's state. Cheap to clone; all clones share the value.
#[derive(Debug, Clone, Default)]
pub struct ReadyFlag(Arc<AtomicBool>);

impl ReadyFlag {
    /// Marks the condition met (`true`) or unmet.
    pub fn set(&self, met: bool) {
        self.0.store(met, Ordering::Release);
    }

    /// Whether the condition is met.
    pub fn get(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// Named readiness conditions; `/readyz` is 200 only when all are met.
#[derive(Debug, Default)]
pub struct Readiness {
    conds: Mutex<Vec<(String, String, ReadyFlag)>>,
}

impl Readiness {
    /// The flag of condition `key` (created unmet on first use); `unmet` is the reason `/readyz`
    /// gives while it is not met.
    pub fn condition(&self, key: &str, unmet: &str) -> ReadyFlag {
        let Ok(mut conds) = self.conds.lock() else {
            return ReadyFlag::default();
        };
        if let Some((_, _, f)) = conds.iter().find(|(k, _, _)| k == key) {
            return f.clone();
        }
        let flag = ReadyFlag::default();
        conds.push((key.to_string(), unmet.to_string(), flag.clone()));
        flag
    }

    /// Sets condition `key` (created on first use) and the reason `/readyz` gives while unmet.
    pub fn set(&self, key: &str, met: bool, unmet: &str) {
        let Ok(mut conds) = self.conds.lock() else {
            return;
        };
        match conds.iter_mut().find(|(k, _, _)| k == key) {
            Some((_, why, f)) => {
                if why != unmet {
                    *why = unmet.to_string();
                }
                f.set(met);
            }
            None => {
                let flag = ReadyFlag::default();
                flag.set(met);
                conds.push((key.to_string(), unmet.to_string(), flag));
            }
        }
    }

    /// Removes a condition (e.g. a trunk deleted by a reload).
    pub fn remove(&self, key: &str) {
        if let Ok(mut conds) = self.conds.lock() {
            conds.retain(|(k, _, _)| k != key);
        }
    }

    /// The reasons of every unmet condition, in registration order.
    pub fn unmet(&self) -> Vec<String> {
        let Ok(conds) = self.conds.lock() else {
            return vec!["readiness state unavailable".into()];
        };
        conds
            .iter()
            .filter(|(_, _, f)| !f.get())
            .map(|(_, why, _)| why.clone())
            .collect()
    }
}
