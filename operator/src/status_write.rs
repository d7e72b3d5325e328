//! Writes a custom resource's status subresource with server-side apply, as the
//! operator's field manager, so fields owned by others (the load-test runner's results)
//! are left alone.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::context::MANAGER;
use crate::error::{Error, Result};

/// Applies `status` to the status of the `K` named `name`.
pub async fn apply_status<K, S>(api: &Api<K>, name: &str, status: &S) -> Result<()>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
    S: Serialize,
{
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube(format!(
        "writing the status of {} {name}",
        K::kind(&())
    )))?;
    Ok(())
}
