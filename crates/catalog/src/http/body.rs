//! [`ReadBody`]: every request body is read to its end before the router
//! sees the request, so that no answer leaves while the client's body is
//! still unread.
//!
//! Why: a handler that rejects a request before reading its body (a 401
//! from the token check, a 415 from the content type) used to answer while
//! the body sat unread in the socket. hyper then closes the connection
//! after the response, but may already have written that response without
//! `Connection: close`, so a keep-alive client sends its next request into
//! a closing connection ("server disconnected without sending a
//! response"). Reading the body first keeps the connection reusable after
//! any answer.
//!
//! Bodies are bounded: one over [`MAX_BODY_BYTES`] is a 413. Its remainder
//! is read and dropped up to [`DRAIN_LIMIT`], so that an oversized body the
//! client has already sent does not cost it the connection either; past
//! that (or with a `Content-Length` announcing more) the 413 says
//! `Connection: close` and the connection ends after it. A body the client
//! fails to deliver (a broken chunked encoding, a disconnect) is a 400 with
//! `Connection: close`. A body that arrives too slowly is cut by the
//! request timeout (408, also with `Connection: close`).
//!
//! Requests without a body (every read) go straight to the router: one
//! check of the body's end-of-stream flag, no allocation.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, HttpBody};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt;
use tower::Service;

use super::error::ApiError;

/// Largest accepted request body (SPEC §3).
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// Most bytes of an oversized body read (and dropped) to keep its
/// connection usable; a larger one is answered and its connection closed.
pub const DRAIN_LIMIT: usize = 1024 * 1024;

/// See the module documentation.
#[derive(Debug, Clone)]
pub struct ReadBody<S> {
    inner: S,
}

impl<S> ReadBody<S> {
    pub(super) fn new(inner: S) -> Self {
        Self { inner }
    }
}

impl<S> Service<Request> for ReadBody<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Response;
    type Error = Infallible;
    type Future = ReadBodyFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if HttpBody::is_end_stream(request.body()) {
            return ReadBodyFuture::Direct {
                response: self.inner.call(request),
            };
        }
        // The service made ready above goes with the request; a clone
        // stays for the next one (tower's usual swap).
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        ReadBodyFuture::Reading {
            response: Box::pin(async move {
                let (parts, body) = request.into_parts();
                match read_whole(&parts.headers, body).await {
                    Ok(bytes) => {
                        inner
                            .call(Request::from_parts(parts, Body::from(bytes)))
                            .await
                    }
                    Err(refusal) => Ok(refusal),
                }
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response of a [`ReadBody`]: the router's own future for a
    /// request without a body, a boxed one that reads the body first
    /// otherwise.
    #[project = ReadBodyProjection]
    pub enum ReadBodyFuture<F> {
        Direct { #[pin] response: F },
        Reading {
            response: Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>,
        },
    }
}

impl<F> Future for ReadBodyFuture<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            ReadBodyProjection::Direct { response } => response.poll(cx),
            ReadBodyProjection::Reading { response } => response.as_mut().poll(cx),
        }
    }
}

/// The whole body, or the response refusing it.
async fn read_whole(headers: &HeaderMap, mut body: Body) -> Result<Bytes, Response> {
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|length| length > DRAIN_LIMIT as u64) {
        return Err(closing(too_large()));
    }
    let mut bytes = BytesMut::new();
    let mut received = 0usize;
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            return Err(closing(
                ApiError::BadRequest("the request body could not be read".into()).into_response(),
            ));
        };
        let Ok(data) = frame.into_data() else {
            continue; // trailers
        };
        received = received.saturating_add(data.len());
        if received > DRAIN_LIMIT {
            return Err(closing(too_large()));
        }
        if received <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&data);
        }
    }
    if received > MAX_BODY_BYTES {
        return Err(too_large());
    }
    Ok(bytes.freeze())
}

fn too_large() -> Response {
    ApiError::PayloadTooLarge {
        limit: MAX_BODY_BYTES,
    }
    .into_response()
}

/// `response`, telling the client that the connection ends after it.
pub(super) fn closing(mut response: Response) -> Response {
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;
    use tower::ServiceExt;

    use super::*;

    /// A route answering with the length of the body it was given.
    fn app() -> ReadBody<Router> {
        ReadBody::new(Router::new().route(
            "/",
            post(|body: Bytes| async move { body.len().to_string() }),
        ))
    }

    async fn send(body: Body, length: Option<usize>) -> (StatusCode, Option<HeaderValue>, String) {
        let mut request = Request::post("/");
        if let Some(length) = length {
            request = request.header(header::CONTENT_LENGTH, length);
        }
        let response = app().oneshot(request.body(body).unwrap()).await.unwrap();
        let status = response.status();
        let connection = response.headers().get(header::CONNECTION).cloned();
        let text = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap();
        (
            status,
            connection,
            String::from_utf8(text.to_vec()).unwrap(),
        )
    }

    /// A body of `len` bytes, streamed in chunks of 8 KiB.
    fn streamed(len: usize) -> Body {
        let chunks: Vec<Result<Bytes, Infallible>> = (0..len)
            .step_by(8192)
            .map(|start| Ok(Bytes::from(vec![b'x'; (len - start).min(8192)])))
            .collect();
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_body_within_the_limit_reaches_the_handler_whole() {
        let (status, connection, text) = send(streamed(MAX_BODY_BYTES), None).await;
        assert_eq!((status, connection), (StatusCode::OK, None));
        assert_eq!(text, MAX_BODY_BYTES.to_string());
    }

    #[tokio::test]
    async fn an_oversized_body_is_read_to_its_end_and_refused_keeping_the_connection() {
        let (status, connection, _) = send(streamed(MAX_BODY_BYTES + 1), None).await;
        assert_eq!((status, connection), (StatusCode::PAYLOAD_TOO_LARGE, None));
    }

    #[tokio::test]
    async fn a_body_past_the_drain_limit_is_refused_and_closes_the_connection() {
        let (status, connection, _) = send(streamed(DRAIN_LIMIT + 1), None).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(connection.unwrap(), "close");

        let announced = send(Body::from("{"), Some(DRAIN_LIMIT + 1)).await;
        assert_eq!(announced.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(announced.1.unwrap(), "close");
    }

    #[tokio::test]
    async fn a_broken_body_is_a_400_that_closes_the_connection() {
        let broken = Body::from_stream(futures_util::stream::iter([
            Ok(Bytes::from_static(b"{")),
            Err(std::io::Error::other("reset")),
        ]));
        let (status, connection, _) = send(broken, None).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(connection.unwrap(), "close");
    }
}
