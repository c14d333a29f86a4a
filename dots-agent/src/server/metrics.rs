//! `GET /metrics` over HTTP/1.1 (hyper): the exposition of `crate::metrics`, rendered on
//! the control thread at each scrape.

use crate::control::ControlHandle;
use crate::metrics::render;

/// Serves `GET /metrics` over HTTP/1.1 until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    control: ControlHandle,
    per_mitigation_limit: usize,
) {
    use http_body_util::Full;
    use hyper::body::Bytes;
    use hyper::{Method, Response, StatusCode};
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let control = control.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
                let control = control.clone();
                async move {
                    let reply = |code: StatusCode, body: String| {
                        Response::builder()
                            .status(code)
                            .header("content-type", "text/plain; charset=utf-8")
                            .body(Full::new(Bytes::from(body)))
                    };
                    if req.uri().path() != "/metrics" {
                        return reply(StatusCode::NOT_FOUND, "metrics are at /metrics\n".into());
                    }
                    if req.method() != Method::GET && req.method() != Method::HEAD {
                        return reply(
                            StatusCode::METHOD_NOT_ALLOWED,
                            "/metrics takes GET\n".into(),
                        );
                    }
                    let text = control
                        .run(move |c| {
                            render(&c.engine, crate::clock::unix_now(), per_mitigation_limit)
                        })
                        .await;
                    let Ok(text) = text else {
                        return reply(StatusCode::SERVICE_UNAVAILABLE, "stopping\n".into());
                    };
                    Response::builder()
                        .header("content-type", prometheus::TEXT_FORMAT)
                        .body(Full::new(Bytes::from(text)))
                }
            });
            let io = hyper_util::rt::TokioIo::new(tcp);
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await
            {
                tracing::debug!("metrics {peer}: {e}");
            }
        });
    }
}
