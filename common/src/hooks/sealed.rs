//! Runs' hooks as the run store keeps them: sealed with the task signing key of whoever
//! submitted the run, and opened by workers only when the seal verifies.

use super::HooksSpec;
use crate::signing::Keyring;
use lapin::types::FieldTable;
use serde::{Deserialize, Serialize};

/// A run's hooks as stored with the run: the spec's JSON and its signature by the task signing
/// key of whoever submitted the run (`hooks:RUN_ID` as message id). Workers run only hooks
/// sealed with a key they hold, so writing to Redis is not enough to make them run a program.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SealedHooks {
    /// The hooks as JSON ([`HooksSpec`]).
    pub spec: String,
    /// Key that signed it (none when signing is disabled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// `v1=` + hex HMAC-SHA256, as tasks are signed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
}

impl SealedHooks {
    /// Seals `spec` for `run` with `keyring` (unsigned without one).
    pub fn seal(
        spec: &HooksSpec,
        run: &str,
        keyring: Option<&Keyring>,
    ) -> serde_json::Result<Self> {
        let json = serde_json::to_string(spec)?;
        let mut headers = FieldTable::default();
        if let Some(keyring) = keyring {
            keyring.sign(&mut headers, &format!("hooks:{run}"), json.as_bytes());
        }
        let get = |name| crate::headers::get_str(Some(&headers), name).map(str::to_string);
        Ok(Self {
            key_id: get(crate::signing::KEY_ID),
            signature: get(crate::signing::SIGNATURE),
            spec: json,
        })
    }

    /// The hooks of `run`, once their seal is checked with `keyring`; without one (signing
    /// disabled explicitly) any hooks are taken.
    pub fn open(&self, run: &str, keyring: Option<&Keyring>) -> Result<HooksSpec, String> {
        if let Some(keyring) = keyring {
            let mut headers = FieldTable::default();
            for (name, value) in [
                (crate::signing::KEY_ID, &self.key_id),
                (crate::signing::SIGNATURE, &self.signature),
            ] {
                if let Some(value) = value {
                    crate::headers::set_str(&mut headers, name, value);
                }
            }
            keyring
                .verify(
                    Some(&headers),
                    &format!("hooks:{run}"),
                    self.spec.as_bytes(),
                )
                .map_err(|e| format!("the run's hooks are not trusted: {e}"))?;
        }
        serde_json::from_str(&self.spec).map_err(|e| format!("the run's hooks do not parse: {e}"))
    }
}
