//! The system's database: one session per reconcile, opened from the Secrets the spec
//! names, that claims the outbox schema (here) and reads the backlog (`observe`).

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use crate::backlog::{BacklogUnavailable, DatabaseSession};
use crate::context::{publish_event, Context};
use crate::crd::{OutboxSystem, OutboxSystemSpec};
use crate::host_names::qualify_database_url;
use crate::postgres_tls::{CaSource, TlsDefaults};
use crate::schema_owner::{self, Claim};

/// A session on the system's database: the URL and CA from the Secrets the spec names.
pub(super) async fn open_database(
    ctx: &Context,
    namespace: &str,
    spec: &OutboxSystemSpec,
) -> Result<DatabaseSession, BacklogUnavailable> {
    let url = secret_value(
        ctx,
        namespace,
        &spec.database.url_secret_ref,
        "urlSecretRef",
    )
    .await?;
    let url = String::from_utf8_lossy(&url).into_owned();
    let ca = match &spec.database.ca_secret_ref {
        Some(ca) => Some(CaSource::Pem(
            secret_value(ctx, namespace, ca, "caSecretRef").await?,
        )),
        None => None,
    };
    let tls = TlsDefaults { sslmode: None, ca };
    DatabaseSession::open(&qualify_database_url(&url, namespace), &tls).await
}

/// The claim of another system on this system's outbox schema, while that system
/// exists; a claim whose holder is gone is taken over (with an Event).
pub(super) async fn schema_taken_by(
    ctx: &Context,
    system: &OutboxSystem,
    namespace: &str,
    session: &mut DatabaseSession,
) -> Option<Claim> {
    let me = schema_owner::system_id(namespace, &system.name_any());
    let claim = match schema_owner::claim(session.client_mut(), &me).await {
        Ok(claim) => claim,
        Err(e) => {
            // Reported through the backlog read that follows on the same session.
            tracing::warn!(error = %e, "could not claim the outbox schema");
            return None;
        }
    };
    if claim.holder == me {
        return None;
    }
    // A holder recorded by hand in another form is not one this operator can look up:
    // it stands.
    let Some((holder_namespace, holder_name)) = claim.holder.split_once('/') else {
        return Some(claim);
    };
    let holders: Api<OutboxSystem> = Api::namespaced(ctx.client.clone(), holder_namespace);
    match holders.get_opt(holder_name).await {
        Ok(None) => {}
        // Alive, or out of this operator's sight (then assumed alive).
        Ok(Some(_)) | Err(_) => return Some(claim),
    }
    match schema_owner::take_over(session.client_mut(), &claim.holder, &me).await {
        Ok(true) => {
            publish_event(
                ctx,
                system,
                EventType::Normal,
                "DatabaseTakenOver",
                format!(
                    "the outbox schema {} was held by OutboxSystem {}, which no longer exists; it is this system's now",
                    claim.schema, claim.holder
                ),
            )
            .await;
            None
        }
        // Another system took it first; the next reconcile names it.
        Ok(false) => Some(claim),
        Err(e) => {
            tracing::warn!(error = %e, "could not take over the outbox schema");
            Some(claim)
        }
    }
}

/// The value of `secret_ref` (`spec.database.<field>`), or why it cannot be had.
async fn secret_value(
    ctx: &Context,
    namespace: &str,
    secret_ref: &crate::crd::SecretKeyRef,
    field: &str,
) -> Result<Vec<u8>, BacklogUnavailable> {
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
    let secret = match secrets.get_opt(&secret_ref.name).await {
        Ok(Some(secret)) => secret,
        Ok(None) => {
            return Err(BacklogUnavailable {
                reason: "DatabaseSecretMissing",
                message: format!(
                    "Secret {} (spec.database.{field}) not found",
                    secret_ref.name
                ),
            })
        }
        Err(e) => {
            return Err(BacklogUnavailable {
                reason: "DatabaseSecretUnreadable",
                message: format!("reading Secret {}: {e}", secret_ref.name),
            })
        }
    };
    secret
        .data
        .and_then(|mut d| d.remove(&secret_ref.key))
        .map(|v| v.0)
        .ok_or_else(|| BacklogUnavailable {
            reason: "DatabaseSecretMissing",
            message: format!(
                "Secret {} has no key {} (spec.database.{field})",
                secret_ref.name, secret_ref.key
            ),
        })
}
