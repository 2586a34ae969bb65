//! The admin UI's JSON pages that the server API already answers: the
//! channel list, one channel (its counts, presence and history), publish
//! and disconnect. Each calls the server API's own functions
//! (`http::api`), so a body is checked, published or refused exactly as
//! `POST /api/publish` and `POST /api/disconnect` do it; only the
//! credentials differ (the session cookie, checked by `admin::handle`,
//! instead of the API key) and each action is written to the audit log.

use std::net::IpAddr;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{json, Value};
use switchboard_protocol::ChannelName;

use crate::http::admin::auth::{audit, Session};
use crate::http::api::{self, ApiError};
use crate::http::response::{self, Body};
use crate::node::Node;

fn answer(result: Result<Value, ApiError>) -> Response<Body> {
    match result {
        Ok(body) => response::json(StatusCode::OK, &body),
        Err(error) => error.into_response(),
    }
}

/// `GET /admin/api/channels?prefix=&cursor=&limit=`: `GET /api/channels`'s answer.
pub async fn channels(node: &Node, query: &str) -> Response<Body> {
    answer(api::channels(node, query).await)
}

/// `GET /admin/api/channel?name=<channel>`: its counts, presence (`null`
/// where the namespace keeps none) and history window (`null` without
/// history).
pub async fn channel(node: &Node, query: &str) -> Response<Body> {
    answer(describe_channel(node, query).await)
}

async fn describe_channel(node: &Node, query: &str) -> Result<Value, ApiError> {
    let name = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "name")
        .map(|(_, value)| value.into_owned())
        .ok_or_else(|| ApiError::bad_request("missing parameter name"))?;
    let channel = ChannelName::parse(&name)
        .map_err(|e| ApiError::bad_request(format!("invalid channel: {e}")))?;
    let namespace = node.config.namespace(channel.namespace());
    let counts = api::channel_counts(node, &channel).await?;
    let presence = if namespace.presence {
        api::presence(node, &channel).await?["members"].take()
    } else {
        Value::Null
    };
    let history = if namespace.history().enabled() {
        let page = api::history(node, &channel, "").await?;
        window(page)
    } else {
        Value::Null
    };
    Ok(json!({
        "channel": channel.as_str(),
        "subscribers": counts["subscribers"],
        "users": counts["users"],
        "presence": presence,
        "history": history,
    }))
}

/// A history answer (`message` frames) as the page shows it: each
/// message's offset and data.
fn window(mut page: Value) -> Value {
    let messages: Vec<Value> = match page["messages"].take() {
        Value::Array(frames) => frames
            .into_iter()
            .map(|mut frame| json!({ "offset": frame["offset"].take(), "data": frame["data"].take() }))
            .collect(),
        _ => Vec::new(),
    };
    json!({
        "epoch": page["epoch"].take(),
        "offset": page["offset"].take(),
        "messages": messages,
    })
}

/// `POST /admin/api/publish` `{"channel", "data"}`: `POST /api/publish`'s
/// answer for the same body.
pub async fn publish(
    node: &Node,
    request: Request<Incoming>,
    session: &Session,
    client: IpAddr,
) -> Response<Body> {
    let result = async {
        let bytes =
            api::read_body(request.into_body(), node.config.session.max_frame_bytes).await?;
        let publication = api::parse_publish(&bytes)?;
        audit(
            "publish",
            Some(&session.id),
            client,
            Some(publication.channel.as_str()),
            None,
        );
        api::publish(node, &publication).await
    };
    answer(result.await)
}

/// `POST /admin/api/disconnect` `{"user", "code"?, "reason"?}`:
/// `POST /api/disconnect`'s answer for the same body.
pub async fn disconnect(
    node: &Node,
    request: Request<Incoming>,
    session: &Session,
    client: IpAddr,
) -> Response<Body> {
    let result = async {
        let bytes =
            api::read_body(request.into_body(), node.config.session.max_frame_bytes).await?;
        let disconnect = api::parse_disconnect(&bytes)?;
        audit(
            "disconnect",
            Some(&session.id),
            client,
            None,
            Some(&disconnect.user),
        );
        api::disconnect(node, &disconnect).await
    };
    answer(result.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_history_window_keeps_offsets_and_data() {
        let page = json!({
            "offset": 2,
            "epoch": "e1",
            "messages": [
                {"type": "message", "channel": "c", "data": {"n": 1}, "offset": 1},
                {"type": "message", "channel": "c", "data": "<script>", "offset": 2},
            ],
        });
        assert_eq!(
            window(page),
            json!({
                "epoch": "e1",
                "offset": 2,
                "messages": [{"offset": 1, "data": {"n": 1}}, {"offset": 2, "data": "<script>"}],
            })
        );
    }
}
