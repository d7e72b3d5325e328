//! Server-side apply under the operator's field manager: the objects it owns (the
//! children of an OutboxSystem, the runner Job), and its part of a custom resource's
//! status, so fields owned by others (the load-test runner's results) are left alone.

use std::fmt::Debug;

use kube::api::{Patch, PatchParams};
use kube::{Api, Resource};
use outbox_contract::status_apply;
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
    let context = || format!("writing the status of {} {name}", K::kind(&()));
    let body = status_apply::body::<K, S>(status).map_err(|source| Error::Serialize {
        what: format!("the status of {} {name}", K::kind(&())),
        source,
    })?;
    status_apply::apply(api, name, MANAGER, &body)
        .await
        .map_err(Error::kube(context()))?;
    Ok(())
}

/// Applies `object` with the operator's field manager, taking over conflicting fields.
pub async fn server_side_apply<K>(api: &Api<K>, object: &K) -> Result<K>
where
    K: Resource + Clone + DeserializeOwned + Serialize + std::fmt::Debug,
    K::DynamicType: Default,
{
    let name = object
        .meta()
        .name
        .clone()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let mut body = serde_json::to_value(object).map_err(|source| Error::Serialize {
        what: name.clone(),
        source,
    })?;
    if let Some(map) = body.as_object_mut() {
        map.insert(
            "apiVersion".into(),
            K::api_version(&Default::default()).into(),
        );
        map.insert("kind".into(), K::kind(&Default::default()).into());
    }
    api.patch(
        &name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(Error::kube(format!(
        "applying {} {name}",
        K::kind(&Default::default())
    )))
}
