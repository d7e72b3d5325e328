//! Writes a custom resource's status subresource with server-side apply, as the
//! operator's field manager, so fields owned by others (the load-test runner's results)
//! are left alone.

use std::fmt::Debug;

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
