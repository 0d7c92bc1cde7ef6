//! Mosquitto through rumqttc, the usual Rust MQTT client, for the
//! `--sdk-messages` comparison: QoS 0 publishes (what `publish_nowait` and
//! core NATS give), QoS 0 subscriptions. The machine's Mosquitto listens on
//! plain TCP only, which favours it against the TLS of the others.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use futures_util::FutureExt;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;

use crate::wire::{Publisher, Subscriber, System};

/// Mosquitto at `addr`.
pub struct Rumqttc {
    pub addr: SocketAddr,
}

/// Publishes QoS 0; the event loop runs in its own task, as an
/// application would run it.
pub struct MqttPub {
    client: AsyncClient,
    /// One message per QoS 1 acknowledgement the event loop saw.
    acked: mpsc::Receiver<()>,
    topic: String,
    queued: Vec<Bytes>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for MqttPub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads its event loop directly (no task or channel between the socket
/// and the counting).
pub struct MqttSub {
    _client: AsyncClient,
    events: EventLoop,
}

/// Packets queued between the client handle and its event loop.
const CHANNEL: usize = 4096;

impl Rumqttc {
    async fn connect(&self) -> anyhow::Result<(AsyncClient, EventLoop)> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let id = format!(
            "spread-bench-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let mut options = MqttOptions::new(id, self.addr.ip().to_string(), self.addr.port());
        options
            .set_keep_alive(Duration::from_secs(30))
            .set_max_packet_size(1 << 20, 1 << 20)
            .set_request_channel_capacity(CHANNEL);
        let (client, mut events) = AsyncClient::new(options, CHANNEL);
        loop {
            let event = events.poll().await.context("connecting to mosquitto")?;
            if let Event::Incoming(Packet::ConnAck(_)) = event {
                return Ok((client, events));
            }
        }
    }
}

impl System for Rumqttc {
    type Pub = MqttPub;
    type Sub = MqttSub;

    fn name(&self) -> &'static str {
        "Mosquitto (rumqttc)"
    }

    async fn publisher(&self) -> anyhow::Result<MqttPub> {
        let (client, mut events) = self.connect().await?;
        let (tx, acked) = mpsc::channel(16);
        let task = tokio::spawn(async move {
            while let Ok(event) = events.poll().await {
                if let Event::Incoming(Packet::PubAck(_)) = event {
                    if tx.send(()).await.is_err() {
                        break;
                    }
                }
            }
        });
        Ok(MqttPub {
            client,
            acked,
            topic: String::new(),
            queued: Vec::new(),
            task,
        })
    }

    async fn subscriber(&self, topic: &str) -> anyhow::Result<MqttSub> {
        let (client, mut events) = self.connect().await?;
        client.subscribe(topic, QoS::AtMostOnce).await?;
        loop {
            let event = events.poll().await.context("subscribing")?;
            if let Event::Incoming(Packet::SubAck(_)) = event {
                break;
            }
        }
        Ok(MqttSub {
            _client: client,
            events,
        })
    }
}

impl Publisher for MqttPub {
    fn queue(&mut self, topic: &str, payload: &[u8]) {
        if self.topic != topic {
            topic.clone_into(&mut self.topic);
        }
        // rumqttc takes each payload as an owned buffer.
        self.queued.push(Bytes::copy_from_slice(payload));
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        for payload in self.queued.drain(..) {
            self.client
                .publish_bytes(self.topic.as_str(), QoS::AtMostOnce, false, payload)
                .await?;
        }
        Ok(())
    }

    async fn finish(&mut self) -> anyhow::Result<()> {
        self.flush().await?;
        // Acknowledged once Mosquitto has it, after every earlier publish
        // of this connection (the subscribers skip the empty payload).
        self.client
            .publish_bytes(self.topic.as_str(), QoS::AtLeastOnce, false, Bytes::new())
            .await?;
        self.acked
            .recv()
            .await
            .context("the event loop ended before the acknowledgement")
    }
}

impl Subscriber for MqttSub {
    async fn next_batch(&mut self, f: &mut (dyn FnMut(&[u8]) + Send)) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut event = self.events.poll().await;
        loop {
            if let Event::Incoming(Packet::Publish(p)) = event? {
                if !p.payload.is_empty() {
                    f(&p.payload);
                    n += 1;
                }
            }
            match self.events.poll().now_or_never() {
                Some(next) if n < 4096 => event = next,
                _ => return Ok(n),
            }
        }
    }
}
