//! A panic in a server task is never lost: `task_failures()` sees it as soon as the task has
//! ended, and dropping the server without `shutdown()` fails the test too.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use paho_testserver::TestServer;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// A transport that panics when the server reads from it: the only way to make a server task
/// panic from outside the crate.
struct Exploding;

impl AsyncRead for Exploding {
    fn poll_read(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        _: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        panic!("the test transport exploded");
    }
}

impl AsyncWrite for Exploding {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
        Poll::Ready(Ok(b.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

async fn server_with_a_panicked_task() -> TestServer {
    let server = TestServer::start().await.unwrap();
    server.serve(Exploding);
    // Let the connection task run (current-thread runtime: it runs when this task yields).
    for _ in 0..100 {
        if !server.task_failures().is_empty() {
            break;
        }
        tokio::task::yield_now().await;
    }
    server
}

#[tokio::test]
async fn task_failures_sees_a_panic_once_the_task_has_ended() {
    let server = server_with_a_panicked_task().await;
    let failures = server.task_failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert!(failures[0].contains("exploded"), "{failures:?}");
    // shutdown() reports it as well.
    let shutdown = tokio::spawn(async move { server.shutdown().await });
    assert!(shutdown.await.unwrap_err().is_panic());
}

#[tokio::test]
async fn dropping_a_server_whose_task_panicked_fails_the_test() {
    let server = server_with_a_panicked_task().await;
    let dropped = catch_unwind(AssertUnwindSafe(|| drop(server)));
    let message = dropped
        .expect_err("the drop passed over a panicked task")
        .downcast_ref::<String>()
        .cloned()
        .unwrap_or_default();
    assert!(message.contains("exploded"), "{message}");
}

#[tokio::test]
async fn dropping_a_healthy_server_does_not_panic() {
    let server = TestServer::start().await.unwrap();
    let _pipe = server.connect_duplex();
    tokio::task::yield_now().await;
    drop(server);
}
