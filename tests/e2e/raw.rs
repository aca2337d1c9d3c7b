//! Small helpers for raw (non-SDK) MQTT clients.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet};

/// What happened to a raw connection.
#[derive(Debug)]
pub enum Outcome<T> {
    /// The expected packet arrived.
    Got(T),
    /// The connection failed or was closed.
    Closed(String),
    /// Nothing within the time limit.
    Timeout,
}

/// Polls until `pick` returns a value, the connection fails, or `limit` passes.
pub async fn poll_for<T>(
    eventloop: &mut EventLoop,
    limit: Duration,
    mut pick: impl FnMut(&Packet) -> Option<T>,
) -> Outcome<T> {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, eventloop.poll()).await {
            Err(_) => return Outcome::Timeout,
            Ok(Err(e)) => return Outcome::Closed(e.to_string()),
            Ok(Ok(Event::Incoming(p))) => {
                if let Some(v) = pick(&p) {
                    return Outcome::Got(v);
                }
            }
            Ok(Ok(_)) => {}
        }
    }
}

/// Connects and waits for the CONNACK.
pub async fn connect(opts: MqttOptions) -> Result<(AsyncClient, EventLoop), String> {
    let (client, mut eventloop) = AsyncClient::new(opts, 16);
    match poll_for(&mut eventloop, Duration::from_secs(10), |p| {
        matches!(p, Packet::ConnAck(_)).then_some(())
    })
    .await
    {
        Outcome::Got(()) => Ok((client, eventloop)),
        Outcome::Closed(e) => Err(e),
        Outcome::Timeout => Err("no CONNACK within 10 s".into()),
    }
}
