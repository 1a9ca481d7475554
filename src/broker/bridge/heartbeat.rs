//! The node heartbeat: a thread that publishes this node's [`NodeRecord`]
//! on `P.nodes` (shard 0) every `redis_node_info_interval`, through shard
//! 0's command connection like any request, and forgets the other nodes
//! gone silent. The records of others arrive on shard 0's subscriber
//! connection ([`heard`]).

use super::*;

pub(super) fn heartbeat_loop(shared: Arc<Shared>, stop: Receiver<()>) {
    let interval = shared.settings.node_info_interval;
    loop {
        publish_record(&shared);
        let mut nodes = lock(&shared.nodes);
        nodes.expire(Instant::now());
        let live = nodes.len() as u64;
        drop(nodes);
        shared.metrics.nodes.store(live, Ordering::Relaxed);
        select! {
            recv(stop) -> _ => return,
            default(interval) => {}
        }
    }
}

/// Enqueues `PUBLISH P.nodes <record>` on shard 0, unless the engine has
/// not set its reporter yet or the command connection is down (the next
/// interval tries again; nothing queues up meanwhile).
fn publish_record(shared: &Shared) {
    let Some(shard) = shared.shards.first() else {
        return;
    };
    if !shard.cmd_up.load(Ordering::SeqCst) {
        return;
    }
    let Some(reporter) = shared.reporter.get() else {
        return;
    };
    let st = &shared.settings;
    let Some(mut record) = reporter(st.node_channels_max) else {
        return;
    };
    record.node = st.node;
    let cmd = redis::cmd("PUBLISH")
        .arg(st.nodes_channel())
        .arg(record.encode())
        .get_packed_command();
    let req = Request {
        worker: NO_WORKER,
        token: 0,
        deadline: Instant::now() + st.publish_timeout,
        kind: ReplyKind::Published,
        cmd,
    };
    shared.metrics.inflight.fetch_add(1, Ordering::Relaxed);
    if shard.outbox.try_send(req).is_err() {
        // Full (Redis not keeping up with the publications): this
        // record is skipped, the next one follows in an interval.
        shared.metrics.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A payload received on `P.nodes`: another node's record is kept, this
/// node's own and garbage are not.
pub(super) fn heard(shared: &Shared, payload: &[u8]) {
    match NodeRecord::decode(payload, shared.settings.node_channels_max) {
        Ok(r) if r.node == shared.settings.node => {}
        Ok(r) => {
            let mut nodes = lock(&shared.nodes);
            nodes.heard(r, Instant::now());
            let live = nodes.len() as u64;
            drop(nodes);
            shared.metrics.nodes.store(live, Ordering::Relaxed);
        }
        Err(e) => {
            BrokerMetrics::inc(&shared.metrics.decode_errors);
            log::debug!("redis: not a node record on the nodes channel: {e}");
        }
    }
}
