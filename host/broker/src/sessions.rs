//! This broker's session with the metadata leader, and, on the leader, the fencing of brokers
//! that missed theirs (see `sluice_metadata::liveness` for the rule).
//!
//! Every `cluster.heartbeat_interval_ms` the broker heartbeats in its current broker epoch. A
//! broker that finds itself fenced (it was stopped or cut off longer than a session: a SIGSTOP,
//! a network cut) registers again, which gives it a new epoch and back the leadership of the
//! partitions whose last in-sync replica it is. The metadata leader fences every registered
//! broker whose session expired, once per expiry (a `FenceBroker` for an older epoch is
//! refused by the state machine).

use std::sync::Arc;
use std::time::Duration;

use sluice_metadata::MetadataCommand;

use crate::Broker;
use crate::config::BrokerConfig;

/// The command that registers this node (a new broker epoch) with its addresses and rack;
/// `fresh` when its data dir was created by this start (so it holds nothing it held before).
pub(crate) fn registration(
    config: &BrokerConfig,
    advertised: &str,
    fresh: bool,
) -> MetadataCommand {
    MetadataCommand::RegisterBrokerLife {
        node_id: config.node_id,
        addr: advertised.to_owned(),
        peer_addr: config.cluster.as_ref().map(|c| {
            c.peer_advertised_addr
                .clone()
                .unwrap_or_else(|| c.peer_listen.to_string())
        }),
        rack: config.rack.clone(),
        fresh,
    }
}

/// Heartbeats, re-registers when fenced, and (on the leader) fences, until shutdown.
pub(crate) async fn run(broker: Arc<Broker>) {
    let Some(cluster) = broker.config.cluster.clone() else {
        return;
    };
    let interval = Duration::from_millis(cluster.heartbeat_interval_ms);
    let session = Duration::from_millis(cluster.session_timeout_ms);
    let mut shutdown = broker.shutdown.subscribe();
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = shutdown.changed() => return,
        }
        let me = broker
            .controller
            .read(|s| s.broker(broker.node_id).map(|b| (b.epoch, b.fenced)));
        match me {
            Some((_, true)) => {
                tracing::warn!(
                    node_id = broker.node_id,
                    "this broker was fenced (it missed its session); registering again"
                );
                let cmd = registration(&broker.config, &broker.advertised, false);
                if let Err(e) = broker.controller.propose_async(cmd).await {
                    tracing::warn!(cause = %e, "registering again failed; retrying");
                }
                continue;
            }
            Some((epoch, false)) => {
                if let Err(e) = broker.controller.heartbeat(epoch).await {
                    tracing::debug!(cause = %e, "heartbeat not taken");
                }
            }
            None => {}
        }
        for (node_id, epoch) in broker.controller.expired_sessions(session) {
            tracing::warn!(
                node_id,
                broker_epoch = epoch,
                session_ms = cluster.session_timeout_ms,
                "broker missed its session; fencing it (its partitions lose their leader)"
            );
            if let Err(e) = broker
                .controller
                .propose_async(MetadataCommand::FenceBroker { node_id, epoch })
                .await
            {
                tracing::debug!(node_id, cause = %e, "fencing not done (it may have registered again)");
            }
        }
    }
}
