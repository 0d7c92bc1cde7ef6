//! Several brokers replicating each other (docs/cluster.md): real broker
//! processes over real TLS, every link through a proxy the test can cut.

mod support;

use std::collections::HashMap;
use std::net::SocketAddr;

use spread_client::{Client, Item, PublishOptions};
use support::{eventually, free_addr, Broker, Proxy};

const SECRET: &str = "cluster-secret-for-tests";

/// Two nodes on fixed addresses, each pulling from the other through a
/// proxy, sharing one CA (the first node's generated TLS material).
struct Pair {
    a: Broker,
    b: Broker,
    /// The link A pulls through (to B; held so that it stays open), and
    /// the one B pulls through (to A).
    _to_b: Proxy,
    to_a: Proxy,
    addr_b: SocketAddr,
}

fn node(listen: SocketAddr, peer: SocketAddr, dir: Option<tempfile::TempDir>) -> Broker {
    node_with(listen, peer, dir, &[])
}

fn node_with(
    listen: SocketAddr,
    peer: SocketAddr,
    dir: Option<tempfile::TempDir>,
    extra: &[&str],
) -> Broker {
    let builder = Broker::builder()
        .listen(listen)
        .flags(&[
            "--archive",
            "off",
            "--cluster-secret",
            SECRET,
            "--peer",
            &peer.to_string(),
        ])
        .flags(extra);
    match dir {
        Some(dir) => builder.dir(dir).start(),
        None => builder.start(),
    }
}

/// A data dir holding a copy of `from`'s TLS material, so that the nodes
/// trust each other's certificate (the default peer CA is the node's own).
fn sharing_tls(from: &Broker) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let tls = dir.path().join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    for entry in std::fs::read_dir(from.dir.path().join("tls")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), tls.join(entry.file_name())).unwrap();
    }
    dir
}

impl Pair {
    async fn start() -> Pair {
        Pair::with(&[], &[]).await
    }

    /// Node A with `extra_a` flags, node B with `extra_b`.
    async fn with(extra_a: &[&str], extra_b: &[&str]) -> Pair {
        let (addr_a, addr_b) = (free_addr(), free_addr());
        let to_a = Proxy::start(addr_a).await;
        let to_b = Proxy::start(addr_b).await;
        let a = node_with(addr_a, to_b.addr, None, extra_a);
        let b = node_with(addr_b, to_a.addr, Some(sharing_tls(&a)), extra_b);
        Pair {
            a,
            b,
            _to_b: to_b,
            to_a,
            addr_b,
        }
    }
}

/// Waits until `client` holds `payload` at `topic`.
async fn holds(client: &Client, topic: &str, payload: &[u8]) -> spread_protocol::Event {
    eventually(&format!("{topic} = {payload:?}"), || async {
        client
            .get(topic)
            .await
            .ok()
            .flatten()
            .filter(|e| e.payload_bytes() == payload)
    })
    .await
}

/// Every event of the node's history, until its `synced` marker.
async fn history(client: &Client) -> Vec<spread_protocol::Event> {
    let mut sub = client.subscribe_history("", 0).await.unwrap();
    let mut out = Vec::new();
    loop {
        match support::next_item(&mut sub).await {
            Item::Event(e) => out.push(e),
            Item::Synced { .. } => return out,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_accept_writes_and_converge_by_the_conflict_rule() {
    let pair = Pair::start().await;
    let (a, b) = (pair.a.client().await, pair.b.client().await);
    a.publish("x/from-a", "1").await.unwrap();
    b.publish("x/from-b", "2").await.unwrap();
    // Each write reaches the other node with its id, timestamp and origin.
    let there = holds(&b, "x/from-a", b"1").await;
    let here = a.get("x/from-a").await.unwrap().unwrap();
    assert_eq!(
        (there.id(), there.timestamp(), there.origin()),
        (here.id(), here.timestamp(), here.origin())
    );
    holds(&a, "x/from-b", b"2").await;

    // Concurrent writes to one topic: the later timestamp wins on both,
    // whichever node applied which first.
    let at = |t: u64| PublishOptions {
        timestamp: Some(t),
        ..Default::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    b.publish_with("x/both", "later", at(now + 10))
        .await
        .unwrap();
    a.publish_with("x/both", "earlier", at(now)).await.unwrap();
    holds(&a, "x/both", b"later").await;
    holds(&b, "x/both", b"later").await;

    // No event is applied twice on either node.
    for client in [&a, &b] {
        let events = history(client).await;
        let mut ids: Vec<_> = events.iter().map(|e| e.id()).collect();
        ids.sort();
        ids.dedup();
        assert_eq!(ids.len(), events.len(), "an event applied twice");
    }
    // Nor sent back where it came from: once A holds a marker written on
    // B after everything else, A's pull has received all B will send it,
    // and that is exactly what B's clients wrote (new on A), none of A's
    // own events echoed.
    b.publish("x/marker", "m").await.unwrap();
    holds(&a, "x/marker", b"m").await;
    let pull = a.peers().await.unwrap().peers.remove(0);
    assert_eq!(pull.received, pull.applied, "{pull:?}");
    assert_eq!(pull.applied, 3, "from-b, later and the marker: {pull:?}");
    assert_eq!(pull.peer_node, b.node_id());
    assert_eq!(pull.peer_incarnation, b.incarnation());
    let mine = a.get("x/from-a").await.unwrap().unwrap().source();
    assert_eq!(
        mine,
        a.incarnation(),
        "an event names the run that accepted it"
    );
    assert_eq!(b.get("x/from-a").await.unwrap().unwrap().source(), mine);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_and_a_restarted_node_resume_from_the_cursor_exactly_once() {
    let pair = Pair::start().await;
    let a = pair.a.client().await;
    a.publish("r/first", "0").await.unwrap();
    holds(&pair.b.client().await, "r/first", b"0").await;

    // The link from B to A is cut and refused: writes on A pile up.
    pair.to_a
        .open
        .store(false, std::sync::atomic::Ordering::SeqCst);
    pair.to_a.cut();
    let b_first = pair.b.client().await;
    let down = eventually("B to report the pull retrying", || async {
        let peers = b_first.peers().await.ok()?.peers;
        peers.into_iter().find(|p| p.state == "retrying")
    })
    .await;
    assert!(down.last_error.is_some(), "{down:?}");
    // Cut off, B falls further behind by the clock.
    eventually("B's lag in milliseconds to grow while cut off", || async {
        let p = b_first.peers().await.ok()?.peers.remove(0);
        (p.lag_ms >= 50).then_some(())
    })
    .await;
    drop(b_first);
    let mut want = HashMap::new();
    let mut last = 0;
    for i in 0..200 {
        let topic = format!("r/{}", i % 50);
        last = a
            .publish(&topic, i.to_string())
            .await
            .unwrap()
            .summary()
            .iteration();
        want.insert(topic, i.to_string());
    }
    // B restarts meanwhile, on the same address and data dir.
    let Pair {
        b, to_a, addr_b, ..
    } = pair;
    let dir = b.stop();
    assert!(
        std::fs::read_dir(dir.path().join("peers")).unwrap().count() > 0,
        "B keeps a cursor per peer"
    );
    let b = node(addr_b, to_a.addr, Some(dir));
    let b_client = b.client().await;
    let before: usize = history(&b_client).await.len();
    to_a.open.store(true, std::sync::atomic::Ordering::SeqCst);
    for (topic, value) in &want {
        holds(&b_client, topic, value.as_bytes()).await;
    }
    // B applied each of the 200 events once: its history grew by exactly
    // what A applied after B's cursor.
    let after = history(&b_client).await;
    assert_eq!(after.len() - before, 200, "every event once, none twice");
    let mut ids: Vec<_> = after.iter().map(|e| e.id()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), after.len());
    // And its cursor for A reaches A's last write, on disk and in status.
    let cursor = b.dir.path().join("peers");
    eventually("B's cursor for A to reach A's last write", || async {
        let file = std::fs::read_dir(&cursor).ok()?.next()?.ok()?.path();
        // `ITERATION ID`: the peer's iteration, and the event it numbered so.
        let text = std::fs::read_to_string(file).ok()?;
        let at: u64 = text.split_whitespace().next()?.parse().ok()?;
        (at >= last).then_some(())
    })
    .await;
    let peer = eventually("B to report the pull live", || async {
        let peers = b_client.peers().await.ok()?.peers;
        peers
            .into_iter()
            .find(|p| p.state == "live" && p.cursor >= last)
    })
    .await;
    assert_eq!(peer.address, to_a.addr.to_string());
    assert!(peer.applied >= 200, "{peer:?}");
    let out = support::cli(&b, &["status", "--json"], None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["peers"][0]["state"], "live", "{v}");
    assert_eq!(v["peers"][0]["lag_events"], 0, "{v}");
    // Live again: the lag is the age of the last event when it was applied.
    assert!(peer.lag_ms < 10_000, "{peer:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_event_too_far_ahead_or_past_the_topic_limit_is_refused_and_the_link_goes_on() {
    // A accepts timestamps an hour ahead; B only its default second, and
    // holds at most three topics.
    let pair = Pair::with(&["--max-clock-skew", "1h"], &["--max-topics", "3"]).await;
    let (a, b) = (pair.a.client().await, pair.b.client().await);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    let future = PublishOptions {
        timestamp: Some(now + 600_000_000),
        ..Default::default()
    };
    a.publish_with("s/future", "frozen?", future).await.unwrap();
    // (A's own clock now stamps after the future event, as a hybrid clock
    // must; these carry the present explicitly.)
    let present = |i: u64| PublishOptions {
        timestamp: Some(now + i),
        ..Default::default()
    };
    a.publish_with("s/1", "1", present(1)).await.unwrap();
    a.publish_with("s/2", "2", present(2)).await.unwrap();
    holds(&b, "s/2", b"2").await;
    assert!(
        b.get("s/future").await.unwrap().is_none(),
        "an event ten minutes ahead of B's clock cannot freeze the topic on B"
    );
    // B's third topic is its own; a fourth from A is refused, later
    // changes to the topics B holds still arrive.
    b.publish("s/b", "mine").await.unwrap();
    a.publish_with("s/3", "3", present(3)).await.unwrap();
    a.publish_with("s/1", "again", present(4)).await.unwrap();
    holds(&b, "s/1", b"again").await;
    assert!(b.get("s/3").await.unwrap().is_none(), "past --max-topics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_node_holds_only_its_prefix_and_the_hub_holds_everything() {
    let pair = Pair::with(&[], &["--replicate", "site-7"]).await;
    let (hub, edge) = (pair.a.client().await, pair.b.client().await);
    hub.publish("site-70/b", "not for the edge").await.unwrap();
    hub.publish("site-8/c", "nor this").await.unwrap();
    hub.publish("site-7/a", "for the edge").await.unwrap();
    edge.publish("elsewhere/e", "from the edge").await.unwrap();
    holds(&edge, "site-7/a", b"for the edge").await;
    // The edge's own writes reach the hub whatever their prefix.
    holds(&hub, "elsewhere/e", b"from the edge").await;
    // The hub's history is pulled in order, so the edge has been offered
    // all that came before site-7/a; none outside its prefix is there.
    let mut topics: Vec<String> = history(&edge)
        .await
        .iter()
        .map(|e| e.topic().to_owned())
        .collect();
    topics.sort();
    assert_eq!(topics, ["elsewhere/e", "site-7/a"]);
}

#[tokio::test]
async fn only_a_token_signed_with_the_cluster_secret_is_a_peer() {
    // A token signed with another secret is refused like any bad token;
    // a node with a cluster secret still takes anonymous clients.
    let broker = Broker::start(&["--cluster-secret", SECRET, "--archive", "off"]);
    let anonymous = broker.client().await;
    anonymous.publish("t", "v").await.unwrap();
    let forged = peer_token("another-secret", "node-x");
    let refused = Client::connect(broker.config().token(forged)).await;
    assert!(refused.is_err(), "a forged peer token is refused");
    let peer = Client::connect(broker.config().token(peer_token(SECRET, "node-x"))).await;
    assert!(
        peer.is_ok(),
        "a token signed with the cluster secret is a peer's"
    );
}

/// A token shaped like a peer's, signed with `secret`.
fn peer_token(secret: &str, node: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({ "sub": node, "exp": exp, "peer": true }),
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A small deterministic generator for seeded schedules (xorshift64*).
struct Schedule(u64);

impl Schedule {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}

/// Nodes on loopback; node `i` pulls from node `j` through
/// `links[&(i, j)]` (every pair in a mesh; a ring has one per node).
struct Mesh {
    nodes: Vec<Option<Broker>>,
    dirs: Vec<Option<tempfile::TempDir>>,
    addrs: Vec<SocketAddr>,
    links: HashMap<(usize, usize), Proxy>,
}

impl Mesh {
    /// `n` nodes, each pulling from every other.
    async fn start(n: usize) -> Mesh {
        let all: Vec<(usize, usize)> = (0..n)
            .flat_map(|i| (0..n).filter(move |j| *j != i).map(move |j| (i, j)))
            .collect();
        Mesh::with_links(n, &all).await
    }

    /// `n` nodes pulling along `pulls`: `(i, j)` means i pulls from j.
    async fn with_links(n: usize, pulls: &[(usize, usize)]) -> Mesh {
        let addrs: Vec<SocketAddr> = (0..n).map(|_| free_addr()).collect();
        let mut links = HashMap::new();
        for &(i, j) in pulls {
            links.insert((i, j), Proxy::start(addrs[j]).await);
        }
        let mut mesh = Mesh {
            nodes: (0..n).map(|_| None).collect(),
            dirs: (0..n).map(|_| None).collect(),
            addrs,
            links,
        };
        mesh.boot(0);
        let first = mesh.nodes[0].as_ref().map(sharing_tls);
        mesh.dirs[1] = first;
        for i in 2..n {
            mesh.dirs[i] = mesh.nodes[0].as_ref().map(sharing_tls);
        }
        for i in 1..n {
            mesh.boot(i);
        }
        mesh
    }

    /// Starts node `i` on its address and data dir.
    fn boot(&mut self, i: usize) {
        let mut flags = vec![
            "--archive".to_string(),
            "off".into(),
            "--cluster-secret".into(),
            SECRET.into(),
        ];
        for ((_, _), proxy) in self.links.iter().filter(|((from, _), _)| *from == i) {
            flags.push("--peer".into());
            flags.push(proxy.addr.to_string());
        }
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut builder = Broker::builder().listen(self.addrs[i]).flags(&flags);
        if let Some(dir) = self.dirs[i].take() {
            builder = builder.dir(dir);
        }
        self.nodes[i] = Some(builder.start());
    }

    fn node(&self, i: usize) -> &Broker {
        self.nodes[i].as_ref().expect("running")
    }

    /// SIGKILLs node `i` and starts it again on the same data dir.
    fn crash_and_restart(&mut self, i: usize) {
        if let Some(broker) = self.nodes[i].take() {
            self.dirs[i] = Some(broker.kill());
        }
        self.boot(i);
    }

    /// Waits until every node holds the same latest events; returns them.
    async fn converged(&self, what: &str) -> Vec<(String, spread_protocol::EventId)> {
        eventually(what, || async {
            let first = state(self.node(0)).await;
            for i in 1..self.nodes.len() {
                if state(self.node(i)).await != first {
                    return None;
                }
            }
            // Then their digests agree too (what an operator compares).
            let digest = |i| async move {
                let client = self.node(i).client().await;
                client.status().await.ok().map(|s| s.digest)
            };
            let d0 = digest(0).await?;
            for i in 1..self.nodes.len() {
                if digest(i).await? != d0 {
                    return None;
                }
            }
            Some(first)
        })
        .await
    }

    /// The events received by every pull of every node, by (puller, peer
    /// address).
    async fn received(&self) -> HashMap<(usize, String), u64> {
        let mut out = HashMap::new();
        for i in 0..self.nodes.len() {
            let client = self.node(i).client().await;
            for p in client.peers().await.unwrap().peers {
                out.insert((i, p.address), p.received);
            }
        }
        out
    }

    /// Writes `value` to `{prefix}/{i}` on every node `i`.
    async fn write_on_each(&self, prefix: &str, value: &str) {
        for i in 0..self.nodes.len() {
            let client = self.node(i).client().await;
            client
                .publish(&format!("{prefix}/{i}"), value.to_owned())
                .await
                .unwrap();
        }
    }

    /// Waits until every pull has received `want(pull)` events since
    /// `start`, failing at once if one receives more.
    async fn each_pull_receives(
        &self,
        start: &HashMap<(usize, String), u64>,
        round: u64,
        want: impl Fn(&(usize, String)) -> u64,
    ) {
        eventually(
            &format!("round {round}: every pull to receive its share"),
            || async {
                let now = self.received().await;
                let mut done = true;
                for (pull, n) in &now {
                    let (got, want) = (n - start[pull], want(pull));
                    assert!(
                        got <= want,
                        "pull {pull:?} received {got} by round {round}, not {want}"
                    );
                    done &= got == want;
                }
                done.then_some(())
            },
        )
        .await;
    }

    /// Waits until every pull of node `i` leaves out `n` runs (its own,
    /// then those its other live pulls deliver).
    async fn skipping(&self, i: usize, n: usize) {
        let client = self.node(i).client().await;
        eventually(
            &format!("node {i}'s pulls to leave out {n} runs"),
            || async {
                let peers = client.peers().await.ok()?.peers;
                peers
                    .iter()
                    .all(|p| p.state == "live" && p.skipping.len() == n)
                    .then_some(())
            },
        )
        .await;
    }

    fn set_link(&self, link: (usize, usize), up: bool) {
        let proxy = &self.links[&link];
        proxy.open.store(up, std::sync::atomic::Ordering::SeqCst);
        if !up {
            proxy.cut();
        }
    }
}

/// The latest event of every topic a node holds: (topic, id).
async fn state(broker: &Broker) -> Vec<(String, spread_protocol::EventId)> {
    let client = broker.client().await;
    let mut sub = client.subscribe("").await.unwrap();
    let mut out: Vec<_> = support::snapshot(&mut sub)
        .await
        .iter()
        .map(|e| (e.topic().to_owned(), e.id()))
        .collect();
    out.sort();
    out
}

/// Random writes, link cuts and heals, SIGKILLs and restarts on a
/// three-node mesh; after the last heal the nodes hold the same state, and
/// every acknowledged write is the latest value of its topic or was
/// superseded by a later write. The seed is printed; `SPREAD_SEED=N`
/// replays a schedule.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_under_random_partitions_and_crashes_converges_and_loses_nothing_acknowledged() {
    let seed = std::env::var("SPREAD_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("partition schedule seed {seed} (SPREAD_SEED={seed} replays it)");
    let mut rng = Schedule(seed);
    let mut mesh = Mesh::start(3).await;
    // Acknowledged writes: topic → (timestamp, origin, id) of each.
    let mut acked: Vec<(String, u64, String, spread_protocol::EventId)> = Vec::new();
    let links: Vec<(usize, usize)> = mesh.links.keys().copied().collect();
    // 150 steps in CI; `SPREAD_MESH_STEPS` for longer runs under load.
    let steps: u64 = std::env::var("SPREAD_MESH_STEPS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    for step in 0..steps {
        match rng.below(10) {
            0..=4 => {
                let i = rng.below(3) as usize;
                let client = mesh.node(i).client().await;
                for k in 0..20 {
                    let topic = if k % 2 == 0 {
                        format!("m/shared/{}", rng.below(8))
                    } else {
                        format!("m/n{i}/{}", rng.below(8))
                    };
                    let out = client
                        .publish(&topic, format!("{step}-{k}"))
                        .await
                        .unwrap_or_else(|e| panic!("seed {seed}: publish on node {i}: {e}"));
                    let s = out.summary();
                    acked.push((topic, s.timestamp(), s.origin().to_owned(), s.id()));
                }
            }
            5 | 6 => mesh.set_link(links[rng.below(links.len() as u64) as usize], false),
            7 | 8 => mesh.set_link(links[rng.below(links.len() as u64) as usize], true),
            _ => mesh.crash_and_restart(rng.below(3) as usize),
        }
    }
    for link in &links {
        mesh.set_link(*link, true);
    }
    let healed = std::time::Instant::now();
    let converged = mesh
        .converged(&format!("seed {seed}: the nodes to converge"))
        .await;
    eprintln!(
        "seed {seed}: converged {} ms after the last heal, {} topics, {} acknowledged writes",
        healed.elapsed().as_millis(),
        converged.len(),
        acked.len()
    );
    // Each acknowledged write is the latest, or a later write superseded it.
    let client = mesh.node(0).client().await;
    let mut latest = HashMap::new();
    for (topic, ..) in &acked {
        if !latest.contains_key(topic) {
            let e = client.get(topic).await.unwrap();
            let e = e.unwrap_or_else(|| panic!("seed {seed}: {topic} lost"));
            latest.insert(
                topic.clone(),
                (e.timestamp(), e.origin().to_owned(), e.id()),
            );
        }
    }
    for (topic, timestamp, origin, id) in acked {
        let (lt, lo, lid) = &latest[&topic];
        assert!(
            (*lt, lo.as_str(), *lid) >= (timestamp, origin.as_str(), id),
            "seed {seed}: an acknowledged write to {topic} is lost"
        );
    }
}

/// In a one-way ring (A pulls from B, B from C, C from A) each write goes
/// round once: it comes back to where it was accepted as `existing` and
/// stops there. Every node ends with every write, each applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_carries_each_write_round_once_and_stops() {
    let mesh = Mesh::with_links(3, &[(0, 1), (1, 2), (2, 0)]).await;
    let mut written = Vec::new();
    for i in 0..3 {
        let client = mesh.node(i).client().await;
        for k in 0..10 {
            let topic = format!("ring/{}", (i * 10 + k) % 15);
            client.publish(&topic, format!("{i}-{k}")).await.unwrap();
            written.push(topic);
        }
    }
    let converged = mesh.converged("the ring to converge").await;
    assert_eq!(converged.len(), 15);
    for i in 0..3 {
        let client = mesh.node(i).client().await;
        let events = history(&client).await;
        let mut ids: Vec<_> = events.iter().map(|e| e.id()).collect();
        ids.sort();
        let all = ids.len();
        ids.dedup();
        assert_eq!(ids.len(), all, "node {i} applied an event twice");
    }
    // Once converged, a write crosses the two links after it and not the
    // one back into the node that accepted it: one new marker per node
    // makes every pull receive exactly the two others'.
    let before = mesh.received().await;
    for i in 0..3 {
        let client = mesh.node(i).client().await;
        client.publish(&format!("marker/{i}"), "m").await.unwrap();
    }
    for i in 0..3 {
        let client = mesh.node(i).client().await;
        for m in 0..3 {
            holds(&client, &format!("marker/{m}"), b"m").await;
        }
    }
    let after = mesh.received().await;
    assert_eq!(after.len(), 3);
    for (pull, n) in &after {
        assert_eq!(
            n - before[pull],
            2,
            "pull {pull:?}: {before:?} -> {after:?}"
        );
    }
}

/// A subscriber given both nodes of a pair resumes on the second when the
/// first is killed: every topic ends on its latest value, nothing is
/// delivered twice and no topic goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_fails_over_to_another_node_without_duplicates_or_going_back() {
    let pair = Pair::start().await;
    let config = pair
        .a
        .config()
        .servers([pair.a.addr.to_string(), pair.b.addr.to_string()]);
    let client = Client::connect(config).await.unwrap();
    let mut sub = client.subscribe("f").await.unwrap();
    support::snapshot(&mut sub).await;
    let (on_a, on_b) = (pair.a.client().await, pair.b.client().await);
    for t in 0..10 {
        on_a.publish(&format!("f/{t}"), "1").await.unwrap();
    }
    for t in 0..10 {
        holds(&on_b, &format!("f/{t}"), b"1").await;
    }
    let mut delivered: Vec<spread_protocol::Event> = Vec::new();
    let mut latest: HashMap<String, Vec<u8>> = HashMap::new();
    while latest.len() < 10 {
        let e = support::next_event(&mut sub).await;
        latest.insert(e.topic().to_owned(), e.payload_bytes().to_vec());
        delivered.push(e);
    }
    // The node the subscriber is on goes away; writes go on on the other.
    let Pair { a, b, .. } = pair;
    drop(a.kill());
    // The subscription resumes on B: its snapshot holds the values already
    // delivered, which must not come again.
    loop {
        match support::next_item(&mut sub).await {
            Item::Event(e) => delivered.push(e),
            Item::Synced { .. } => break,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(delivered.len(), 10, "the resumed snapshot repeated nothing");
    for t in 0..11 {
        on_b.publish(&format!("f/{t}"), "2").await.unwrap();
    }
    while latest.len() < 11 || latest.values().any(|v| v != b"2") {
        let e = support::next_event(&mut sub).await;
        latest.insert(e.topic().to_owned(), e.payload_bytes().to_vec());
        delivered.push(e);
    }
    assert_eq!(client.node_id(), b.client().await.node_id(), "now on B");
    let mut ids: Vec<_> = delivered.iter().map(|e| e.id()).collect();
    ids.sort();
    let all = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), all, "an event delivered twice");
    let mut last: HashMap<&str, (u64, &str)> = HashMap::new();
    for e in &delivered {
        let key = (e.timestamp(), e.origin());
        if let Some(prev) = last.insert(e.topic(), key) {
            assert!(prev < key, "{} went back", e.topic());
        }
    }
}

/// A node whose data dir is replaced by an older copy of itself rejoins:
/// what it lost comes back from its peer, what it writes after reaches the
/// peer, and both end with the same state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restored_from_an_older_copy_rejoins_and_converges() {
    let Pair {
        a,
        b,
        to_a,
        addr_b,
        _to_b,
    } = Pair::start().await;
    let (on_a, on_b) = (a.client().await, b.client().await);
    on_a.publish("o/a", "1").await.unwrap();
    on_b.publish("o/b", "1").await.unwrap();
    holds(&on_a, "o/b", b"1").await;
    holds(&on_b, "o/a", b"1").await;
    // The copy, taken from the stopped node.
    drop(on_b);
    let dir = b.stop();
    let backup = tempfile::tempdir().unwrap();
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(format!("{}/.", dir.path().display()))
        .arg(backup.path())
        .status()
        .unwrap();
    assert!(copied.success());
    // Writes on B after the copy, which A receives; then B is lost.
    let b = node(addr_b, to_a.addr, Some(dir));
    let on_b = b.client().await;
    for t in 0..20 {
        on_b.publish(&format!("o/lost/{t}"), "on b").await.unwrap();
    }
    for t in 0..20 {
        holds(&on_a, &format!("o/lost/{t}"), b"on b").await;
    }
    drop(on_b);
    drop(b.kill());
    // B comes back from the copy and takes writes again.
    let b = node(addr_b, to_a.addr, Some(backup));
    let on_b = b.client().await;
    on_b.publish("o/after", "restored").await.unwrap();
    on_a.publish("o/a", "2").await.unwrap();
    holds(&on_a, "o/after", b"restored").await;
    for t in 0..20 {
        holds(&on_b, &format!("o/lost/{t}"), b"on b").await;
    }
    holds(&on_b, "o/a", b"2").await;
    assert_eq!(state(&a).await, state(&b).await);
    // A found B's history changed under its cursor and compared digests:
    // it fetched the few topics that differ, not B's whole state.
    let pull = first_pull(&on_a).await;
    assert_eq!(pull.exchanges, 1, "{pull:?}");
    assert!(pull.exchange_requests <= 8, "{pull:?}");
}

/// The pull of `broker` (the first one it has).
async fn first_pull(client: &Client) -> spread_protocol::PeerStatus {
    client.peers().await.unwrap().peers.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_whose_history_is_gone_sends_the_latest_values_changed_since_not_its_whole_state() {
    // A keeps about 128 KiB of log (enforced below its checkpoints, one
    // every 1,000 events) and 16 recent events in memory.
    let pair = Pair::with(
        &[
            "--segment-bytes",
            "65536",
            "--retention-bytes",
            "131072",
            "--checkpoint-every",
            "1000",
            "--recent-events",
            "16",
        ],
        &[],
    )
    .await;
    let (a, b) = (pair.a.client().await, pair.b.client().await);
    // 2,000 topics, 100 under each of 20 parents (more than an answer
    // lists: the parents' children are split into buckets).
    let topic = |i: usize| format!("d/{}/{i}", i % 20);
    for i in 0..2000 {
        a.publish(&topic(i), "v0").await.unwrap();
    }
    holds(&b, &topic(1999), b"v0").await;
    eventually("B to hold all of A's topics", || async {
        (state(&pair.a).await == state(&pair.b).await).then_some(())
    })
    .await;
    let before = first_pull(&a).await;

    // B's link to A is cut; A changes 10 topics, many times over, until
    // retention has deleted the history after B's cursor.
    pair.to_a
        .open
        .store(false, std::sync::atomic::Ordering::SeqCst);
    pair.to_a.cut();
    eventually("B to see the link down", || async {
        (first_pull(&b).await.state == "retrying").then_some(())
    })
    .await;
    let b_before = first_pull(&b).await;
    let big = vec![b'x'; 1024];
    for round in 0..400 {
        for t in 0..10 {
            let mut payload = big.clone();
            payload.extend_from_slice(format!("{round}").as_bytes());
            a.publish(&topic(t * 37), payload).await.unwrap();
        }
    }
    let status = a.status().await.unwrap();
    assert!(
        status
            .retained_from
            .is_some_and(|oldest| oldest > b_before.cursor + 1),
        "retention must have deleted the history after B's cursor: {status:?} {b_before:?}"
    );

    // Healed: B takes the latest values of the 10 changed topics (not
    // their 4,000 writes, which are gone, nor A's 2,000 topics).
    pair.to_a
        .open
        .store(true, std::sync::atomic::Ordering::SeqCst);
    eventually("B to converge with A", || async {
        (state(&pair.a).await == state(&pair.b).await).then_some(())
    })
    .await;
    let pull = eventually("B's pull to be live again", || async {
        let p = first_pull(&b).await;
        (p.state == "live").then_some(p)
    })
    .await;
    assert_eq!(
        pull.exchanges, b_before.exchanges,
        "no digest exchange needed: {pull:?}"
    );
    // Converged nodes report the same digest of their latest values.
    assert_eq!(
        a.status().await.unwrap().digest,
        b.status().await.unwrap().digest
    );
    assert_ne!(a.status().await.unwrap().digest, 0);
    assert_eq!(
        pull.received - b_before.received,
        10,
        "only the 10 topics that differ cross the link, not A's 2,000: {pull:?}"
    );
    assert_eq!(pull.applied - b_before.applied, 10, "{pull:?}");
    // A pulled nothing back from B meanwhile (B had nothing A lacks).
    let after = first_pull(&a).await;
    assert_eq!(after.applied, before.applied, "{after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_periodic_digest_exchange_takes_what_a_link_refused_once_it_can() {
    // B refuses A's writes past its third topic; its cursor moves past them.
    let pair = Pair::with(&[], &["--max-topics", "3"]).await;
    let a = pair.a.client().await;
    for t in 0..5 {
        a.publish(&format!("ae/{t}"), "from a").await.unwrap();
    }
    let b = pair.b.client().await;
    eventually("B to refuse two of A's topics", || async {
        (first_pull(&b).await.refused == 2).then_some(())
    })
    .await;
    drop(b);
    // Restarted with room, and a digest exchange every second: the
    // history after its cursor does not hold the refused events again, the
    // exchange does.
    let Pair {
        a: node_a,
        b,
        to_a,
        addr_b,
        _to_b,
    } = pair;
    let dir = b.stop();
    let b = node_with(
        addr_b,
        to_a.addr,
        Some(dir),
        &["--max-topics", "10", "--anti-entropy-secs", "1"],
    );
    let on_b = b.client().await;
    for t in 0..5 {
        holds(&on_b, &format!("ae/{t}"), b"from a").await;
    }
    let pull = first_pull(&on_b).await;
    assert!(pull.exchanges >= 1, "{pull:?}");
    assert_eq!(state(&node_a).await, state(&b).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_clock_runs_ten_minutes_ahead_cannot_freeze_a_topic_elsewhere() {
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let (to_a, to_b) = (Proxy::start(addr_a).await, Proxy::start(addr_b).await);
    let common = ["--archive", "off", "--cluster-secret", SECRET, "--peer"];
    let skewed = Broker::builder()
        .listen(addr_a)
        .flags(&common)
        .flags(&[&to_b.addr.to_string()])
        .env("SPREAD_TEST_CLOCK_OFFSET_SECS", "600")
        .start();
    let honest = node(addr_b, to_a.addr, Some(sharing_tls(&skewed)));
    let (a, b) = (skewed.client().await, honest.client().await);
    // A stamps with its own clock, ten minutes ahead: B refuses the event
    // (counted on its pull) instead of letting it win every write to come.
    let stamped = a.publish("skew/t", "from the future").await.unwrap();
    let ahead = stamped.summary().timestamp();
    a.publish("skew/marker", "m").await.unwrap();
    let refused = eventually("B to refuse A's stamp", || async {
        let p = first_pull(&b).await;
        (p.refused >= 2).then_some(p)
    })
    .await;
    assert_eq!(refused.applied, 0, "{refused:?}");
    assert!(b.get("skew/t").await.unwrap().is_none());
    // B's own writes to the topic still take.
    b.publish("skew/t", "now").await.unwrap();
    let here = b.get("skew/t").await.unwrap().unwrap();
    assert_eq!(here.payload_bytes(), b"now");
    assert!(here.timestamp() < ahead);
    drop((to_a, to_b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_authenticated_by_certificates_alone_replicate() {
    // A CA for the nodes' client certificates, and one certificate each.
    let ca = support::TestCa::new();
    let ca_file = &ca.file;
    let (cert_a, key_a) = ca.issue("node-a");
    let (cert_b, key_b) = ca.issue("node-b");
    let start = |listen: SocketAddr, peer: SocketAddr, cert: &Path, key: &Path, dir| {
        let builder = Broker::builder().listen(listen).flags(&[
            "--archive",
            "off",
            "--tls-client-ca",
            ca_file.to_str().unwrap(),
            "--peer",
            &peer.to_string(),
            "--peer-cert",
            cert.to_str().unwrap(),
            "--peer-key",
            key.to_str().unwrap(),
        ]);
        match dir {
            Some(dir) => builder.dir(dir).start(),
            None => builder.start(),
        }
    };
    use std::path::Path;
    let (addr_a, addr_b) = (free_addr(), free_addr());
    let a = start(addr_a, addr_b, &cert_a, &key_a, None);
    let b = start(addr_b, addr_a, &cert_b, &key_b, Some(sharing_tls(&a)));
    let connect = |broker: &Broker, cert: &Path, key: &Path| {
        Client::connect(broker.config().client_cert(cert, key))
    };
    let on_a = connect(&a, &cert_a, &key_a).await.unwrap();
    let on_b = connect(&b, &cert_b, &key_b).await.unwrap();
    on_a.publish("mtls/a", "1").await.unwrap();
    on_b.publish("mtls/b", "2").await.unwrap();
    holds(&on_b, "mtls/a", b"1").await;
    holds(&on_a, "mtls/b", b"2").await;
    // The pulls are live, with no cluster secret anywhere.
    for client in [&on_a, &on_b] {
        let pull = eventually("the pull to be live", || async {
            let p = first_pull(client).await;
            (p.state == "live").then_some(p)
        })
        .await;
        assert!(pull.applied >= 1, "{pull:?}");
    }
    // A certificate without its key is a configuration error, said so.
    let refused = Broker::builder()
        .flags(&[
            "--peer",
            "127.0.0.1:9",
            "--peer-cert",
            cert_a.to_str().unwrap(),
        ])
        .fail_to_start();
    assert!(refused.contains("--peer-key go together"), "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_three_nodes_at_once_converge_and_no_subscriber_sees_a_value_go_back() {
    let mesh = Mesh::start(3).await;
    // A subscriber on every node, from before the first write.
    let mut subs = Vec::new();
    for i in 0..3 {
        let client = mesh.node(i).client().await;
        let mut sub = client.subscribe("c").await.unwrap();
        assert!(support::snapshot(&mut sub).await.is_empty());
        subs.push((client, sub));
    }
    // Three writers at once, on shared and on their own topics.
    let writers = (0..3).map(|i| {
        let node = mesh.node(i);
        async move {
            let client = node.client().await;
            for k in 0..200 {
                let topic = if k % 2 == 0 {
                    format!("c/shared/{}", k / 2 % 10)
                } else {
                    format!("c/n{i}/{}", k / 2 % 10)
                };
                client.publish(&topic, format!("{i}-{k}")).await.unwrap();
            }
        }
    });
    futures_util::future::join_all(writers).await;
    let converged = mesh.converged("the three nodes to converge").await;
    assert_eq!(converged.len(), 40);
    let want: HashMap<String, spread_protocol::EventId> = converged.into_iter().collect();
    // Every subscriber ends on the converged values, and saw each topic
    // only move forward in the conflict order on the way.
    for (i, (_client, sub)) in subs.iter_mut().enumerate() {
        let mut last: HashMap<String, (u64, String, spread_protocol::EventId)> = HashMap::new();
        while want
            .iter()
            .any(|(topic, id)| last.get(topic).map(|(.., l)| l) != Some(id))
        {
            let Item::Event(e) = support::next_item(sub).await else {
                continue;
            };
            let key = (e.timestamp(), e.origin().to_owned(), e.id());
            if let Some(previous) = last.get(e.topic()) {
                assert!(
                    key > *previous,
                    "node {i}: {} went back from {previous:?} to {key:?}",
                    e.topic()
                );
            }
            last.insert(e.topic().to_owned(), key);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_carries_each_write_a_bounded_number_of_times_and_stops() {
    // A — B — C: B pulls from both ends, each end from B.
    let mesh = Mesh::with_links(3, &[(1, 0), (0, 1), (1, 2), (2, 1)]).await;
    // B leaves each end's own writes out of its pull from the other end.
    mesh.skipping(1, 2).await;
    let start = mesh.received().await;
    for round in 1..=2u64 {
        mesh.write_on_each("chain", &round.to_string()).await;
        // Per round of one write on each node: an end's pull from B
        // receives B's write and the other end's (two); B's pull from an
        // end receives that end's write only (one): the other end's comes
        // by its own pull, and B's own is never sent back. More would mean
        // a loop or a write carried twice; the counts must reach exactly
        // that, never pass it.
        mesh.each_pull_receives(
            &start,
            round,
            |pull| if pull.0 == 1 { round } else { 2 * round },
        )
        .await;
    }
    let converged = mesh.converged("the chain to converge").await;
    assert_eq!(converged.len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mesh_carries_each_write_over_each_link_once() {
    let mesh = Mesh::start(3).await;
    for i in 0..3 {
        mesh.skipping(i, 2).await;
    }
    let start = mesh.received().await;
    for round in 1..=3u64 {
        mesh.write_on_each("mesh", &round.to_string()).await;
        // Each pull receives its peer's write only: the third node's comes
        // by that node's own pull, not relayed.
        mesh.each_pull_receives(&start, round, |_| round).await;
    }
    assert_eq!(mesh.converged("the mesh to converge").await.len(), 3);
}

/// A three-node mesh where C's link to A silently stops: A's writes reach
/// B, C leaves them out of its pull from B (A's own pull is to deliver
/// them), then B writes past them in its history.
async fn stranded_writes() -> (Mesh, Vec<String>) {
    let mesh = Mesh::start(3).await;
    for i in 0..3 {
        mesh.skipping(i, 2).await;
    }
    mesh.links[&(2, 0)].stall();
    let a = mesh.node(0).client().await;
    let b = mesh.node(1).client().await;
    let c = mesh.node(2).client().await;
    let mut topics = Vec::new();
    for k in 0..20 {
        let topic = format!("stranded/{k}");
        a.publish(&topic, "from A").await.unwrap();
        topics.push(topic);
    }
    for topic in &topics {
        holds(&b, topic, b"from A").await;
    }
    b.publish("stranded/later", "from B").await.unwrap();
    holds(&c, "stranded/later", b"from B").await;
    assert!(
        c.get("stranded/0").await.unwrap().is_none(),
        "C left A's writes to its stalled pull from A"
    );
    (mesh, topics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_ends_leaves_what_it_did_not_deliver_to_the_others() {
    let (mut mesh, topics) = stranded_writes().await;
    // A dies and C's pull from it ends: C's pull from B takes what it left
    // out.
    if let Some(a) = mesh.nodes[0].take() {
        a.kill();
    }
    mesh.set_link((2, 0), false);
    let c = mesh.node(2).client().await;
    for topic in &topics {
        holds(&c, topic, b"from A").await;
    }
    let peers = c.peers().await.unwrap().peers;
    assert!(
        peers.iter().any(|p| p.exchanges > 0),
        "taken by a digest exchange with B: {peers:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_after_leaving_writes_to_a_dead_peer_takes_them_from_another() {
    let (mut mesh, topics) = stranded_writes().await;
    // C's cursor for B passes the writes it left out, and says so.
    let b_iteration = mesh
        .node(1)
        .client()
        .await
        .status()
        .await
        .unwrap()
        .iteration;
    let c = mesh.node(2).client().await;
    let b_addr = mesh.links[&(2, 1)].addr.to_string();
    eventually("C's cursor for B to pass B's last write", || async {
        let peers = c.peers().await.ok()?.peers;
        peers
            .iter()
            .any(|p| p.address == b_addr && p.cursor >= b_iteration)
            .then_some(())
    })
    .await;
    drop(c);
    // C dies first (its pull from A still waiting on the stalled link),
    // then A; C comes back while A stays down.
    if let Some(c) = mesh.nodes[2].take() {
        mesh.dirs[2] = Some(c.kill());
    }
    if let Some(a) = mesh.nodes[0].take() {
        a.kill();
    }
    mesh.set_link((2, 0), false);
    mesh.boot(2);
    let c = mesh.node(2).client().await;
    for topic in &topics {
        holds(&c, topic, b"from A").await;
    }
}
