//! The witness as a long-running service on the agency's MQTT connection:
//! it subscribes to the broker's cosigning requests and to the cosigned
//! checkpoints the broker publishes, answers the first and cross-checks the
//! second. It reconnects after any connection error, with backoff, each
//! time to the next of the configured broker addresses (after the last, the
//! first again).

use std::future::Future;
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, Incoming, MqttOptions, NetworkOptions, QoS, TlsConfiguration, Transport,
};
use tracing::{debug, error, info, warn};

use super::{Observation, Witness};
use crate::client::AgencyConfig;
use crate::client::ClientError;
use crate::client::brokers::Rotation;
use crate::topics;

/// Backoff between reconnects: from the first to the longest.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(5));

/// Runs the witness for `config.agency` until `shutdown` completes.
pub async fn run(
    witness: &Witness,
    config: &AgencyConfig,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ClientError> {
    config.validate()?;
    let tls = crate::client::tls::client_config(config)?;
    let suffix = uuid::Uuid::new_v4().simple().to_string();
    let client_id = format!("{}-witness-{}", config.agency, &suffix[..8]);
    let Some(mut brokers) = Rotation::new(
        config
            .brokers()
            .into_iter()
            .map(|broker| {
                let mut options =
                    MqttOptions::new(client_id.clone(), broker.host.clone(), broker.port);
                options
                    .set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
                        tls.clone(),
                    )))
                    .set_keep_alive(Duration::from_secs(30))
                    .set_clean_session(true)
                    .set_max_packet_size(config.max_packet_size, config.max_packet_size);
                (broker, options)
            })
            .collect(),
    ) else {
        return Err(ClientError::Config("no broker address".into()));
    };
    let (mqtt, mut eventloop) = AsyncClient::new(brokers.value().clone(), 64);
    let mut network = NetworkOptions::new();
    network.set_tcp_nodelay(true);
    network.set_connection_timeout(config.connect_timeout.as_secs().max(1));
    eventloop.set_network_options(network);
    let requests = topics::witness_requests(&config.agency);
    let cosigned = topics::cosigned_checkpoint(&config.agency);
    let mut backoff = BACKOFF.0;
    tokio::pin!(shutdown);
    loop {
        let event = tokio::select! {
            _ = &mut shutdown => break,
            event = eventloop.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(_))) => {
                backoff = BACKOFF.0;
                info!(agency = %config.agency, broker = %brokers.address(), "witness connected");
                let filters = [&requests, &cosigned]
                    .map(|f| rumqttc::SubscribeFilter::new(f.to_string(), QoS::AtLeastOnce));
                if let Err(e) = mqtt.try_subscribe_many(filters) {
                    warn!(error = %e, "could not subscribe; reconnecting");
                }
            }
            Ok(Event::Incoming(Incoming::Publish(publish))) => {
                let topic = publish.topic.as_str();
                if let Some(id) = topics::witness_request_id(&config.agency, topic) {
                    let answer = match witness.add_checkpoint(&publish.payload).await {
                        Ok(answer) => answer,
                        Err(e) => {
                            // Without its state the witness answers nothing.
                            error!(error = %e, "the witness state failed; no answer");
                            continue;
                        }
                    };
                    match &answer {
                        super::Answer::Cosigned(_) => debug!(id, "cosigned"),
                        other => {
                            warn!(id, status = other.status(), body = %String::from_utf8_lossy(&other.body()).trim(), "refused to cosign")
                        }
                    }
                    let topic = topics::witness_answer(&config.agency, id, answer.status());
                    if let Err(e) = mqtt.try_publish(topic, QoS::AtLeastOnce, false, answer.body())
                    {
                        warn!(error = %e, "could not send the answer (the broker asks again)");
                    }
                } else if topic == cosigned {
                    let note = String::from_utf8_lossy(&publish.payload);
                    match witness.observe(&note).await {
                        Ok(Observation::Consistent) => {}
                        Ok(Observation::Conflict(_)) => {}
                        Err(e) => {
                            warn!(error = %e, "a published cosigned checkpoint was not checked")
                        }
                    }
                }
            }
            Ok(_) => {}
            Err(e) => {
                let failed = brokers.address().to_string();
                if brokers.advance() {
                    eventloop.mqtt_options = brokers.value().clone();
                }
                warn!(error = %e, broker = %failed, next = %brokers.address(), retry_in_ms = backoff.as_millis() as u64, "witness connection lost");
                tokio::select! {
                    _ = &mut shutdown => break,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(BACKOFF.1);
            }
        }
    }
    let _ = mqtt.try_disconnect();
    Ok(())
}
