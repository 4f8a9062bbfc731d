#![allow(clippy::unwrap_used)]
//! The core storage contract, and what only a shared store must do, against real
//! `redis-server` processes: one standalone, one 3-master cluster.

use std::time::{Duration, Instant};

use shortlinks_core::store::{conformance, LinkStore, Queues};
use shortlinks_core::Error;
use shortlinks_redis::testing::{RedisCluster, RedisServer};
use shortlinks_redis::{RedisConfig, RedisStore, RedisTarget};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_meets_the_contract() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    conformance::run(&RedisStore::open(server.config("conf")).await.unwrap()).await;
}

/// What Redis keeps for a gateway's address, counted in the keyspace: a hundred thousand
/// clicks of as many contacts leave at most the tally's bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateways_tally_stays_small_in_the_keyspace() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    let store = RedisStore::open(server.config("tally")).await.unwrap();
    let port = server.port();
    conformance::a_gateways_tally_stays_small(&store, 100, |address| async move {
        let tag: String = address.iter().map(|b| format!("{b:02x}")).collect();
        let count = |kind: &str| {
            let key = format!("tally:seen:{{{tag}}}:{kind}");
            shortlinks_redis::testing::cli(port, &["ZCARD", &key]).unwrap().trim().parse::<usize>().unwrap()
        };
        let keys = shortlinks_redis::testing::cli(port, &["--scan", "--pattern", "tally:seen:*"]).unwrap();
        assert_eq!(keys.lines().count(), 2, "two keys for the address: {keys}");
        count("contacts") + count("spans")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_meets_the_contract_and_shares_queues() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let cluster = RedisCluster::start(3).unwrap();
    conformance::run(&RedisStore::open(cluster.config("conf")).await.unwrap()).await;
    two_consumers_share_a_queue(cluster.config("shared")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standalone_queues_are_shared_between_nodes() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    two_consumers_share_a_queue(server.config("shared")).await;
}

/// Two nodes drain one queue without handing out an entry twice; a node that goes silent
/// has its leased entries taken over by the other.
async fn two_consumers_share_a_queue(config: RedisConfig) {
    let config = RedisConfig { claim_after: Duration::from_millis(500), ..config };
    let a = RedisStore::open(config.clone()).await.unwrap();
    let b = RedisStore::open(config).await.unwrap();
    assert_ne!(a.consumer(), b.consumer());
    a.push("q", (0u8..6).map(|i| vec![i]).collect()).await.unwrap();

    let leased_by_a = a.lease("q", 2).await.unwrap();
    assert_eq!(records(&leased_by_a), vec![0, 1]);
    assert_eq!(records(&a.lease("q", 2).await.unwrap()), vec![0, 1], "a's own lease comes back to a first");
    let leased_by_b = b.lease("q", 3).await.unwrap();
    assert_eq!(records(&leased_by_b), vec![2, 3, 4], "b never sees what a holds");
    b.remove("q", leased_by_b.iter().map(|(id, _)| *id).collect()).await.unwrap();

    // a goes silent holding 0 and 1; once they have been idle long enough, b takes them.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let taken = b.lease("q", 10).await.unwrap();
    assert_eq!(records(&taken), vec![0, 1, 5], "abandoned entries first, then new ones");
    b.remove("q", taken.iter().map(|(id, _)| *id).collect()).await.unwrap();
    assert!(b.lease("q", 10).await.unwrap().is_empty());
    assert!(a.lease("q", 10).await.unwrap().is_empty(), "a's entries are gone once b handled them");

    // A consumer's own long-idle entries are not handed to it twice in one lease (reading
    // its own pending entries first resets their idle time, so XAUTOCLAIM skips them).
    a.push("own", vec![vec![9]]).await.unwrap();
    assert_eq!(records(&a.lease("own", 10).await.unwrap()), vec![9]);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(records(&a.lease("own", 10).await.unwrap()), vec![9]);
}

fn records(entries: &[(shortlinks_core::model::EntryId, Vec<u8>)]) -> Vec<u8> {
    entries.iter().map(|(_, r)| r[0]).collect()
}

/// Redis going away gives a clear "unavailable" error in bounded time, and the same
/// store handle works again once Redis is back, with the data it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_is_survived_without_reopening() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let mut server = RedisServer::standalone_with(&["--appendfsync", "always"]).unwrap();
    let config = RedisConfig { response_timeout: Duration::from_millis(500), ..server.config("restart") };
    let store = RedisStore::open(config).await.unwrap();
    let link = conformance::link("RsTaRt123456", 1, 7, "https://restart.example/");
    store.insert_links(vec![link.clone()]).await.unwrap();

    server.kill();
    let started = Instant::now();
    let failed = store.get_link(&link.code).await;
    assert!(matches!(failed, Err(Error::Unavailable(_))), "got {failed:?}");
    assert!(started.elapsed() < Duration::from_secs(10), "the failure is not left hanging");

    server.restart().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let found = loop {
        match store.get_link(&link.code).await {
            Ok(found) => break found,
            Err(e) if Instant::now() < deadline => {
                eprintln!("still reconnecting: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("the store never came back: {e}"),
        }
    };
    assert_eq!(found, Some(link), "the link survived the restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_gone_for_good_leave_the_consumer_group() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    let config = |name: &str, claim_after: Duration| RedisConfig {
        consumer: Some(name.into()),
        claim_after,
        forget_consumer_after: Duration::from_millis(300),
        ..server.config("consumers")
    };
    let consumers = || {
        shortlinks_redis::testing::cli(server.port(), &["xinfo", "consumers", "consumers:queue:q", "shortlinks"])
            .unwrap()
    };
    let gone = RedisStore::open(config("gone", Duration::from_secs(600))).await.unwrap();
    let busy = RedisStore::open(config("busy", Duration::from_secs(600))).await.unwrap();
    gone.push("q", vec![b"a".to_vec(), b"b".to_vec()]).await.unwrap();
    let done = gone.lease("q", 1).await.unwrap();
    gone.remove("q", vec![done[0].0]).await.unwrap();
    assert_eq!(busy.lease("q", 1).await.unwrap().len(), 1, "busy leases the other entry and goes silent");
    tokio::time::sleep(Duration::from_millis(400)).await;

    // A node that takes nothing over: only the silent consumer that holds nothing goes.
    let alive = RedisStore::open(config("alive", Duration::from_secs(600))).await.unwrap();
    assert!(alive.lease("q", 10).await.unwrap().is_empty());
    let listed = consumers();
    assert!(!listed.contains("gone"), "silent and holding nothing: removed\n{listed}");
    assert!(listed.contains("busy"), "silent but holding an entry: kept, or the entry would be lost\n{listed}");
    assert!(listed.contains("alive"), "{listed}");

    // Once its entry is taken over, the silent node holds nothing and goes too.
    let rescuer = RedisStore::open(config("rescuer", Duration::from_millis(200))).await.unwrap();
    assert_eq!(rescuer.lease("q", 10).await.unwrap().len(), 1, "busy's entry is taken over");
    let listed = consumers();
    assert!(!listed.contains("busy"), "{listed}");
    assert!(listed.contains("alive") && listed.contains("rescuer"), "{listed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_limited_to_its_prefix_and_commands_meets_the_contract() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let setuser = |port: u16| {
        let mut args: Vec<String> = ["acl", "setuser", "shortlinks", "on", ">s3cret"].map(String::from).to_vec();
        args.extend(shortlinks_redis::acl::acl_rules("least"));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        assert_eq!(shortlinks_redis::testing::cli(port, &args).unwrap().trim(), "OK");
    };
    let as_user = |port: u16| format!("redis://shortlinks:s3cret@127.0.0.1:{port}/");
    let with_prefix =
        |target: RedisTarget, prefix: &str| RedisConfig { key_prefix: prefix.into(), ..RedisConfig::new(target) };

    let server = RedisServer::standalone().unwrap();
    setuser(server.port());
    let target = RedisTarget::Standalone(as_user(server.port()));
    conformance::run(&RedisStore::open(with_prefix(target.clone(), "least")).await.unwrap()).await;
    two_consumers_share_a_queue(with_prefix(target.clone(), "least")).await;
    // Outside its prefix the user can do nothing: the rule really is that narrow.
    let outside = RedisStore::open(with_prefix(target, "other")).await.unwrap();
    let code = shortlinks_core::ShortCode::from_key(b"AbCdEfGh1234").unwrap();
    assert!(outside.get_link(&code).await.is_err(), "keys outside the prefix are refused");

    let cluster = RedisCluster::start(3).unwrap();
    let ports: Vec<u16> = cluster.nodes().iter().map(RedisServer::port).collect();
    for &port in &ports {
        setuser(port);
    }
    let target = RedisTarget::Cluster(ports.iter().map(|&p| as_user(p)).collect());
    conformance::run(&RedisStore::open(with_prefix(target, "least")).await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replicas_ack_a_write_is_acknowledged_only_once_replicated() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let primary = RedisServer::standalone().unwrap();
    let port = primary.port().to_string();
    let mut replica = RedisServer::standalone_with(&["--replicaof", "127.0.0.1", &port]).unwrap();
    let caught_up = || {
        shortlinks_redis::testing::cli(replica.port(), &["info", "replication"])
            .is_some_and(|i| i.contains("master_link_status:up"))
    };
    shortlinks_core::testing::until(Duration::from_secs(20), "the replica caught up", || async { caught_up() }).await;
    let config =
        RedisConfig { replicas_ack: 1, replicas_ack_timeout: Duration::from_millis(500), ..primary.config("acked") };
    let store = RedisStore::open(config).await.unwrap();
    conformance::run(&store).await;
    // What was acknowledged is on the replica.
    let link = conformance::link("AcKeD0000001", 1, 9, "https://acked.example/");
    store.insert_links(vec![link.clone()]).await.unwrap();
    let on_replica = shortlinks_redis::testing::cli(replica.port(), &["exists", "acked:link:AcKeD0000001"]).unwrap();
    assert_eq!(on_replica.trim(), "1", "acknowledged means the replica has it");

    // Without the replica, a write is an error after the timeout, never a silent success.
    replica.kill();
    let started = Instant::now();
    let late = conformance::link("AcKeD0000002", 1, 10, "https://acked.example/2");
    let refused = store.insert_links(vec![late]).await;
    assert!(matches!(&refused, Err(Error::Unavailable(why)) if why.contains("0 of 1 replicas")), "{refused:?}");
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(matches!(store.push("q", vec![b"x".to_vec()]).await, Err(Error::Unavailable(_))), "queued clicks too");
    // Reads do not wait on replicas.
    assert_eq!(store.get_link(&link.code).await.unwrap(), Some(link));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca_and_client_certificates() {
    if !shortlinks_redis::testing::tls_available() {
        return;
    }
    use shortlinks_redis::testing::TestCertificates;
    use shortlinks_redis::RedisTls;
    let certs = TestCertificates::make().unwrap();
    let tls = |ca: &str, client: bool| RedisTls {
        ca_file: Some(certs.path(ca)),
        client_cert: client.then(|| (certs.path("client.crt"), certs.path("client.key"))),
    };
    let over_tls = |port: u16, prefix: &str, tls: RedisTls| RedisConfig {
        key_prefix: prefix.into(),
        tls,
        response_timeout: Duration::from_secs(2),
        ..RedisConfig::new(RedisTarget::Standalone(format!("rediss://127.0.0.1:{port}/")))
    };

    // The server's certificate signed by the CA given: the whole contract over TLS.
    let (_server, port) = RedisServer::standalone_tls(&certs, false).unwrap();
    conformance::run(&RedisStore::open(over_tls(port, "tls", tls("ca.crt", false))).await.unwrap()).await;
    // By host name: checked against the certificate's DNS name, and sent as SNI.
    let by_name = RedisConfig {
        key_prefix: "tlsname".into(),
        tls: tls("ca.crt", false),
        ..RedisConfig::new(RedisTarget::Standalone(format!("rediss://localhost:{port}/")))
    };
    let named = RedisStore::open(by_name).await.unwrap();
    named.push("q", vec![b"by name".to_vec()]).await.unwrap();
    // A CA that did not sign it: refused, and the error says why.
    let refused = RedisStore::open(over_tls(port, "tls", tls("rogue-ca.crt", false))).await.err().expect("refused");
    assert!(refused.to_string().to_lowercase().contains("certificate"), "a clear error: {refused}");
    // The system's roots do not know a private CA either.
    let no_ca = RedisStore::open(over_tls(port, "tls", RedisTls::default())).await;
    assert!(no_ca.is_err());

    // A server that asks for client certificates: with one, the store works; without, not.
    let (_strict, strict_port) = RedisServer::standalone_tls(&certs, true).unwrap();
    let store = RedisStore::open(over_tls(strict_port, "mtls", tls("ca.crt", true))).await.unwrap();
    store.push("q", vec![b"over mutual TLS".to_vec()]).await.unwrap();
    assert_eq!(store.lease("q", 1).await.unwrap()[0].1, b"over mutual TLS");
    assert!(RedisStore::open(over_tls(strict_port, "mtls", tls("ca.crt", false))).await.is_err());
    // A cluster over TLS: the bus and the clients, the same settings.
    let cluster = shortlinks_redis::testing::RedisCluster::start_tls(3, &certs).unwrap();
    let config = RedisConfig {
        key_prefix: "tlscluster".into(),
        tls: tls("ca.crt", false),
        ..RedisConfig::new(RedisTarget::Cluster(cluster.tls_urls()))
    };
    conformance::run(&RedisStore::open(config.clone()).await.unwrap()).await;
    let rogue = RedisConfig { tls: tls("rogue-ca.crt", false), ..config };
    assert!(RedisStore::open(rogue).await.is_err(), "a cluster whose certificates the CA did not sign is refused");
    // A missing file is a clear error before any connection.
    let missing = RedisTls { ca_file: Some(certs.path("nope.crt")), client_cert: None };
    let err = RedisStore::open(over_tls(port, "tls", missing)).await.err().expect("refused");
    assert!(err.to_string().contains("nope.crt"), "{err}");
}

/// Each node reads the codes erased by any node; one that reads too late (after they were
/// trimmed) is told so, and must drop its whole cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erasures_reach_every_reader_or_tell_it_what_it_missed() {
    use shortlinks_core::store::{ErasureCursor, ErasureNews, LinkStore};
    use shortlinks_core::Tombstone;
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    let store = RedisStore::open(server.config("hear")).await.unwrap();
    let started = match store.erasures_since(ErasureCursor::default()).await.unwrap() {
        ErasureNews::Codes { codes, next } => {
            assert!(codes.is_empty(), "the first read starts from now");
            next
        }
        lost => panic!("{lost:?}"),
    };
    let links = [
        conformance::link("HEARHEAR0001", 1, 1, "https://a.example/"),
        conformance::link("HEARHEAR0002", 1, 2, "https://a.example/"),
    ];
    store.insert_links(links.to_vec()).await.unwrap();
    store.erase_links(vec![(links[0].clone(), Tombstone([1; 16]))]).await.unwrap();
    let after_first = match store.erasures_since(started.clone()).await.unwrap() {
        ErasureNews::Codes { codes, next } => {
            assert_eq!(codes, [links[0].code]);
            next
        }
        lost => panic!("{lost:?}"),
    };
    match store.erasures_since(after_first.clone()).await.unwrap() {
        ErasureNews::Codes { codes, next } => assert!(codes.is_empty() && next == after_first),
        lost => panic!("{lost:?}"),
    }
    store.erase_links(vec![(links[1].clone(), Tombstone([2; 16]))]).await.unwrap();
    store.trim_erasures(std::time::Duration::ZERO).await.unwrap();
    assert!(
        matches!(store.erasures_since(after_first).await.unwrap(), ErasureNews::Lost { .. }),
        "a reader behind a trimmed erasure is told it missed some"
    );
}

/// Links never change, so a node keeps the ones it creates: their first clicks cost no
/// round trip there. Another node reads each once; an erasure takes it out of the creator.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_serves_the_links_it_created_from_memory() {
    use shortlinks_core::{AccountId, EntityRef, NewLink, Outcome, Principal, Resolved, Shortener, TargetUrl, UserId};
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    let reads = || {
        let stats = shortlinks_redis::testing::cli(server.port(), &["INFO", "commandstats"]).unwrap();
        let get = stats.lines().find_map(|l| l.strip_prefix("cmdstat_get:calls=")).unwrap_or("0,");
        get.split(',').next().unwrap().parse::<u64>().unwrap()
    };
    let creator = Shortener::builder(RedisStore::open(server.config("warm")).await.unwrap()).build().await.unwrap();
    let other = Shortener::builder(RedisStore::open(server.config("warm")).await.unwrap()).build().await.unwrap();
    let who = Principal::all_contacts(AccountId(1), UserId(1));
    let items: Vec<NewLink> = (1..=3)
        .map(|id| NewLink {
            target: TargetUrl::parse("https://warm.example/").unwrap(),
            entity: EntityRef::contact(id),
        })
        .collect();
    let codes: Vec<String> = creator
        .create(&who, &items)
        .await
        .unwrap()
        .into_iter()
        .map(|outcome| match outcome {
            Outcome::Linked(link) => link.code.as_str().to_owned(),
            other => panic!("{other:?}"),
        })
        .collect();

    let before = reads();
    for code in &codes {
        assert!(creator.resolve(code).await.unwrap().is_some());
    }
    assert_eq!(reads(), before, "the creator read no link from Redis");
    for code in &codes {
        assert!(other.resolve(code).await.unwrap().is_some());
        assert!(other.resolve(code).await.unwrap().is_some());
    }
    assert_eq!(reads(), before + 3, "another node read each link once");

    creator.erase(AccountId(1), EntityRef::contact(1)).await.unwrap();
    let gone = creator.resolve_with(&codes[0], |_| ()).await.unwrap();
    assert_eq!(gone, Resolved::Erased, "the erasure took it out of the creator's cache");
}

/// The index by target: one key per account and URL, named without the URL and gone with
/// its last link; with `index_targets` off, no such key, and a look-up by URL is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_by_target_holds_no_url_and_can_be_turned_off() {
    if !shortlinks_redis::testing::available() {
        return;
    }
    let server = RedisServer::standalone().unwrap();
    let keys =
        |pattern: &str| shortlinks_redis::testing::cli(server.port(), &["--scan", "--pattern", pattern]).unwrap();
    let url = "https://unique-target.example/only-here";
    let link = conformance::link("InDeX0000001", 3, 30, url);

    let store = RedisStore::open(server.config("on")).await.unwrap();
    store.insert_links(vec![link.clone()]).await.unwrap();
    let index = keys("on:to:*");
    assert_eq!(index.lines().count(), 1, "{index}");
    assert!(index.starts_with("on:to:3:") && !index.contains("unique-target"), "{index}");
    assert_eq!(store.links_to(link.account, &link.target, 10).await.unwrap(), vec![link.clone()]);
    let tombstone = shortlinks_core::Tombstone([3; 16]);
    store.erase_links(vec![(link.clone(), tombstone)]).await.unwrap();
    assert!(keys("on:to:*").trim().is_empty(), "the index goes with its last link");

    let config = RedisConfig { index_targets: false, ..server.config("off") };
    let store = RedisStore::open(config).await.unwrap();
    store.insert_links(vec![link.clone()]).await.unwrap();
    assert!(keys("off:to:*").trim().is_empty(), "no index by target");
    let refused = store.links_to(link.account, &link.target, 10).await;
    assert!(matches!(&refused, Err(Error::InvalidInput(why)) if why.contains("redis_index_targets")), "{refused:?}");
    assert_eq!(store.links_of(link.account, link.entity).await.unwrap(), vec![link], "by contact still");
}
