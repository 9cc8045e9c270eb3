//! The conformance echo endpoint: every text and binary message comes back as it was, on
//! the same upgrade, configuration and transport as real sessions. Off by default
//! (`session.echo_path`); the Autobahn fuzzingclient cases run against it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        Message,
        protocol::{CloseFrame, frame::coding::CloseCode as WsCloseCode},
    },
};

use super::{CLOSE_TIMEOUT, end_for_error};

/// The largest message the conformance suite sends (its 9.x cases go to 16 MiB).
pub(super) const MAX_MESSAGE_BYTES: usize = 32 * 1024 * 1024;

pub(super) async fn run<S>(mut ws: WebSocketStream<S>, idle_timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let Ok(next) = tokio::time::timeout(idle_timeout, ws.next()).await else {
            return;
        };
        match next {
            Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                if ws.send(message).await.is_err() {
                    return;
                }
            }
            Some(Ok(Message::Close(_))) => {
                // tungstenite has queued the close reply; the sink's close writes it, and
                // the stream's flush sends it (tungstenite does not flush after the reply).
                let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = SinkExt::close(&mut ws).await;
                    tokio::io::AsyncWriteExt::flush(ws.get_mut()).await
                })
                .await;
                return;
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(err)) => {
                if let Some(code) = end_for_error(&err).close_code() {
                    let frame = CloseFrame {
                        code: WsCloseCode::from(code.code()),
                        reason: code.reason().into(),
                    };
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                        let _ = ws.send(Message::Close(Some(frame))).await;
                        let _ = SinkExt::close(&mut ws).await;
                        tokio::io::AsyncWriteExt::flush(ws.get_mut()).await
                    })
                    .await;
                }
                return;
            }
            None => return,
        }
    }
}
