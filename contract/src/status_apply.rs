//! Writing a custom resource's status with server-side apply, under a field manager of
//! its own, so that the operator and the load-test runner each own their fields of a
//! LoadTest's status and neither overwrites the other's (conditions are a list-map keyed
//! by `type`, merged per entry).

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The apply body for the status of a `K`: its apiVersion, kind and `status`.
pub fn body<K, S>(status: &S) -> serde_json::Result<serde_json::Value>
where
    K: Resource<DynamicType = ()>,
    S: Serialize,
{
    Ok(serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": serde_json::to_value(status)?,
    }))
}

/// Applies `body` (see [`body`]) to the status of the `K` named `name` as `manager`,
/// forcing ownership of the fields it carries.
pub async fn apply<K>(
    api: &Api<K>,
    name: &str,
    manager: &str,
    body: &serde_json::Value,
) -> Result<K, kube::Error>
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug,
{
    api.patch_status(
        name,
        &PatchParams::apply(manager).force(),
        &Patch::Apply(body),
    )
    .await
}
