//! Racing publishers on one topic: every subscriber sees one order and ends
//! on the same latest value, never going back.

mod support;

use futures_util::future::join_all;
use spread_client::{Item, PublishStatus};
use support::{snapshot, Broker, PATIENCE};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_publishers_converge_for_every_subscriber() {
    const PUBLISHERS: usize = 8;
    const EACH: usize = 500;
    let broker = Broker::start(&[]);

    let mut watchers = Vec::new();
    for _ in 0..3 {
        let c = broker.client().await;
        let mut s = c.subscribe("race").await.unwrap();
        snapshot(&mut s).await;
        watchers.push((c, s));
    }

    let publishers = join_all((0..PUBLISHERS).map(|_| broker.client())).await;
    let tasks = publishers.into_iter().enumerate().map(|(p, c)| {
        tokio::spawn(async move {
            // Pipelined: all of this publisher's writes in flight at once.
            let writes = (0..EACH).map(|i| {
                let c = c.clone();
                async move { c.publish("race/hot", format!("{p}-{i}")).await }
            });
            let reports = join_all(writes).await;
            reports
                .into_iter()
                .map(|r| r.expect("publish"))
                .inspect(|r| assert_eq!(r.status(), PublishStatus::New))
                .map(|r| r.summary().iteration())
                .max()
        })
    });
    let last = join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.expect("task").expect("reports"))
        .max()
        .unwrap();

    let reader = broker.client().await;
    let final_event = reader.get("race/hot").await.unwrap().unwrap();
    assert_eq!(
        final_event.iteration(),
        last,
        "the last applied write is the latest value"
    );

    for (_, mut sub) in watchers {
        let mut prev: Option<spread_client::Event> = None;
        let mut count = 0;
        loop {
            let item = tokio::time::timeout(PATIENCE, sub.next_item())
                .await
                .expect("in time")
                .expect("open")
                .expect("ok");
            let Item::Event(e) = item else { continue };
            count += 1;
            if let Some(p) = &prev {
                assert!(e.iteration() > p.iteration(), "iterations go forward");
                assert!(
                    e.cmp_order(p) == std::cmp::Ordering::Greater,
                    "a subscriber never sees the value go back"
                );
            }
            let done = e.iteration() == last;
            prev = Some(e);
            if done {
                break;
            }
        }
        assert_eq!(prev.unwrap().id(), final_event.id());
        assert!(count <= PUBLISHERS * EACH);
    }
}
