//! `/apis/kairn.dev/v1/members`: the store's members, and membership changes, for
//! `kairn member list|add|remove`. Changes are for `system:masters` only: a wrong one
//! can cost the cluster its quorum.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::json;

use super::auth::UserInfo;
use super::error::ApiError;
use super::AppState;
use crate::store::{MemberChange, NodeId};

/// The path of the members list.
pub const PATH: &str = "/apis/kairn.dev/v1/members";

/// The body of `POST /apis/kairn.dev/v1/members`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AddMember {
    /// The new member's Raft id.
    pub id: NodeId,
    /// Its Raft address.
    pub raft_addr: String,
    /// Add it without a vote.
    #[serde(default)]
    pub learner: bool,
}

fn require_admin(user: &UserInfo) -> Result<(), ApiError> {
    if user.groups.iter().any(|g| g == "system:masters") {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "user {:?} cannot change the store's membership (system:masters only)",
            user.name
        )))
    }
}

/// `GET`: every member with its role, API URL and replication progress.
pub async fn list(State(state): State<AppState>) -> Response {
    match state.store.members() {
        Ok(items) => Json(json!({"kind": "MemberList", "apiVersion": "kairn.dev/v1", "items": items})).into_response(),
        Err(e) => ApiError::from(e).into_response(),
    }
}

/// `POST`: adds a member (a voter after it has caught up, or a learner).
pub async fn add(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    body: Result<Json<AddMember>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let result = async {
        require_admin(&user)?;
        let Json(add) = body.map_err(|e| ApiError::BadRequest(e.body_text()))?;
        add.raft_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| ApiError::BadRequest(format!("raftAddr {:?}: {e}", add.raft_addr)))?;
        let change = if add.learner {
            MemberChange::AddLearner {
                id: add.id,
                addr: add.raft_addr,
            }
        } else {
            MemberChange::AddVoter {
                id: add.id,
                addr: add.raft_addr,
            }
        };
        state.store.change_members(change).await?;
        Ok::<_, ApiError>(state.store.members()?)
    };
    match result.await {
        Ok(items) => (
            StatusCode::CREATED,
            Json(json!({"kind": "MemberList", "apiVersion": "kairn.dev/v1", "items": items})),
        )
            .into_response(),
        Err(e) => e.into_response(),
    }
}

/// `DELETE /{id}`: removes a member.
pub async fn remove(
    State(state): State<AppState>,
    Extension(user): Extension<Arc<UserInfo>>,
    Path(id): Path<NodeId>,
) -> Response {
    let result = async {
        require_admin(&user)?;
        if !state.store.members()?.iter().any(|m| m.id == id) {
            return Err(ApiError::NotFound {
                kind: "member".into(),
                name: id.to_string(),
            });
        }
        state.store.change_members(MemberChange::Remove { id }).await?;
        Ok(state.store.members()?)
    };
    match result.await {
        Ok(items) => Json(json!({"kind": "MemberList", "apiVersion": "kairn.dev/v1", "items": items})).into_response(),
        Err(e) => e.into_response(),
    }
}
