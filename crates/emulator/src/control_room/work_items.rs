//! The work-item queue API (`/v3/wlm/queues/...`): the "real work" whose 401s show whether
//! clients kept their tokens current.
//!
//! Items live only in memory; each poll of an item moves it one step along
//! NEW → IN_PROGRESS → COMPLETED, so that a client polling until completion gets there in two
//! polls. Every call first checks the presented token with `state`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use serde::Serialize;
use serde_json::{Value, json};

use super::authentication::presented_token;
use super::error::ApiError;
use super::state::Shared;

/// Where a work item is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub(super) enum Status {
    New,
    InProgress,
    Completed,
}

impl Status {
    /// The status after one more poll.
    fn next(self) -> Self {
        match self {
            Self::New => Self::InProgress,
            Self::InProgress | Self::Completed => Self::Completed,
        }
    }
}

/// One work item.
struct WorkItem {
    /// The queue it was added to; asking for it under another queue is a 404.
    queue_id: String,
    /// Its status as last reported.
    status: Status,
}

/// Every work item added so far.
#[derive(Default)]
pub(super) struct WorkItems {
    /// Items by id.
    items: HashMap<u64, WorkItem>,
    /// The last id handed out; ids are unique across queues, as in Control Room.
    last_id: u64,
}

impl WorkItems {
    /// Adds `count` items to `queue_id`, returning their ids.
    fn add(&mut self, queue_id: &str, count: usize) -> Vec<u64> {
        (0..count)
            .map(|_| {
                self.last_id += 1;
                let item = WorkItem {
                    queue_id: queue_id.to_owned(),
                    status: Status::New,
                };
                self.items.insert(self.last_id, item);
                self.last_id
            })
            .collect()
    }

    /// Advances an item by one step and returns its new status.
    fn poll(&mut self, queue_id: &str, id: u64) -> Option<Status> {
        let item = self.items.get_mut(&id)?;
        if item.queue_id != queue_id {
            return None;
        }
        item.status = item.status.next();
        Some(item.status)
    }
}

/// `POST /v3/wlm/queues/{queue_id}/workitems`: adds one item per entry of `workItems` (one
/// if the body has no such list).
pub(super) async fn create(
    State(shared): State<Arc<Shared>>,
    Path(queue_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let username = refuse_unless_current(&shared, &headers)?;
    let count = if body.is_empty() {
        1
    } else {
        let body: Value = serde_json::from_slice(&body)
            .map_err(|_| ApiError::BadRequest("Request body is not valid JSON"))?;
        body.get("workItems")
            .and_then(Value::as_array)
            .map_or(1, |items| items.len().max(1))
    };
    let ids = shared.work_items().add(&queue_id, count);
    shared.count_api_call_ok();
    tracing::debug!(username, queue_id, count, "work items added");
    let list: Vec<Value> = ids
        .into_iter()
        .map(|id| json!({ "id": id, "status": Status::New }))
        .collect();
    Ok(Json(json!({ "list": list })))
}

/// `GET /v3/wlm/queues/{queue_id}/workitems/{id}`.
pub(super) async fn poll(
    State(shared): State<Arc<Shared>>,
    Path((queue_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Json<Value>, ApiError> {
    let username = refuse_unless_current(&shared, &headers)?;
    let id: u64 = id.parse().map_err(|_| ApiError::NotFound)?;
    let status = shared
        .work_items()
        .poll(&queue_id, id)
        .ok_or(ApiError::NotFound)?;
    shared.count_api_call_ok();
    tracing::debug!(username, queue_id, id, ?status, "work item polled");
    Ok(Json(json!({ "id": id, "status": status })))
}

/// The user the call acts for, or a 401 (counted) for anything but a current token.
fn refuse_unless_current(shared: &Shared, headers: &HeaderMap) -> Result<String, ApiError> {
    shared
        .authorize(presented_token(headers))
        .map_err(|refusal| {
            tracing::info!(?refusal, "work-item call refused");
            ApiError::Unauthorized
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_advance_to_completed_and_stay_there() {
        let mut items = WorkItems::default();
        let ids = items.add("7", 2);
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(items.poll("7", 1), Some(Status::InProgress));
        assert_eq!(items.poll("7", 1), Some(Status::Completed));
        assert_eq!(items.poll("7", 1), Some(Status::Completed));
        assert_eq!(items.poll("7", 2), Some(Status::InProgress));
    }

    #[test]
    fn unknown_items_and_other_queues_are_not_found() {
        let mut items = WorkItems::default();
        let ids = items.add("7", 1);
        assert_eq!(items.poll("7", 99), None);
        assert_eq!(items.poll("8", ids[0]), None);
    }

    #[test]
    fn statuses_serialize_as_control_room_spells_them() {
        let spelled = serde_json::to_value([Status::New, Status::InProgress, Status::Completed])
            .expect("plain enum serializes");
        assert_eq!(spelled, json!(["NEW", "IN_PROGRESS", "COMPLETED"]));
    }
}
