//! The Lua scripts of the Redis bus (`src/cluster/redis/lua/*.lua`) in a real redis-server:
//! every one compiles (a syntax error fails here, not on the first cluster that runs it),
//! and the publish, read, presence and occupancy scripts run through `EVAL` on their edge
//! cases: empty keys, expired node entries, retries, the largest page. `revoke`,
//! `user_limit` and `publish_rates` run theirs the same way; the operations on messages
//! with ids (`streams_op.lua`) run under the cluster tests of streams.

use crate::redis_server::RedisServer;

#[test]
fn every_lua_script_of_the_redis_bus_compiles() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/cluster/redis/lua");
    let mut scripts: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "lua"))
        .collect();
    scripts.sort();
    assert!(scripts.len() >= 25, "{} scripts in {dir}", scripts.len());
    let redis = RedisServer::start(false);
    for path in scripts {
        let source = std::fs::read_to_string(&path).unwrap();
        let sha = redis.cli(&["SCRIPT", "LOAD", &source]).unwrap_or_default();
        assert!(
            sha.len() == 40 && sha.bytes().all(|byte| byte.is_ascii_hexdigit()),
            "{} does not compile: {sha}",
            path.display()
        );
    }
}

/// A plain connection to `redis` for `EVAL`s.
fn connect(redis: &RedisServer) -> redis::Connection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_connection()
        .unwrap()
}

/// The presence scripts through `EVAL` on a real redis-server, as `cluster::redis::presence`
/// calls them: the five keys of a channel (members by id, their JSON, counts per user,
/// node liveness, write memos) and ARGV node, incarnation, judge-until, ttl, then the
/// script's own.
mod presence {
    use redis::{Commands as _, Script, Value};

    use crate::redis_server::RedisServer;

    const COMMON: &str = include_str!("../../src/cluster/redis/lua/presence_common.lua");
    const KEYS: [&str; 5] = ["pm:c", "pd:c", "pu:c", "pn:c", "pc:c"];
    const TTL_MS: u64 = 60_000;

    struct Presence {
        conn: redis::Connection,
        write: Script,
        page: Script,
        stats: Script,
    }

    impl Presence {
        fn new(redis: &RedisServer) -> Presence {
            let script = |body: &str| Script::new(&format!("{COMMON}{body}"));
            Presence {
                conn: super::connect(redis),
                write: script(include_str!(
                    "../../src/cluster/redis/lua/presence_write.lua"
                )),
                page: script(include_str!(
                    "../../src/cluster/redis/lua/presence_page.lua"
                )),
                stats: script(include_str!(
                    "../../src/cluster/redis/lua/presence_stats.lua"
                )),
            }
        }

        /// Redis's clock, in milliseconds.
        fn now_ms(&mut self) -> u64 {
            let (secs, micros): (u64, u64) = redis::cmd("TIME").query(&mut self.conn).unwrap();
            secs * 1000 + micros / 1000
        }

        fn run(
            &mut self,
            script: &Script,
            node: &str,
            judge_until: u64,
            args: &[String],
        ) -> Vec<Value> {
            let mut invocation = script.prepare_invoke();
            for key in KEYS {
                invocation.key(key);
            }
            invocation.arg(node).arg("1").arg(judge_until).arg(TTL_MS);
            for arg in args {
                invocation.arg(arg);
            }
            match invocation.invoke(&mut self.conn).unwrap() {
                Value::Array(reply) => reply,
                other => panic!("presence answered {other:?}"),
            }
        }

        /// `node` joins `members` (id, user): the script's outcome (0 done, 1 lost).
        fn join(&mut self, node: &str, expect: bool, members: &[(String, &str)]) -> i64 {
            let mut args = vec![
                u8::from(expect).to_string(),
                "0".to_owned(),
                members.len().to_string(),
            ];
            for (id, user) in members {
                args.extend([
                    id.clone(),
                    (*user).to_owned(),
                    format!(r#"{{"user":"{user}","id":"{id}"}}"#),
                ]);
            }
            args.extend(["1".to_owned(), "0".to_owned()]);
            let reply = self.run(&self.write.clone(), node, 0, &args);
            int(&reply[2])
        }

        /// One page after `cursor`: (departed, crossings, ids, jsons).
        fn page(
            &mut self,
            node: &str,
            judge_until: u64,
            cursor: &str,
            limit: usize,
        ) -> [Vec<String>; 4] {
            let reply = self.run(
                &self.page.clone(),
                node,
                judge_until,
                &[cursor.to_owned(), limit.to_string()],
            );
            let strings = |value: &Value| match value {
                Value::Array(items) => items
                    .iter()
                    .map(|item| match item {
                        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).unwrap(),
                        other => panic!("{other:?}"),
                    })
                    .collect(),
                other => panic!("{other:?}"),
            };
            [
                strings(&reply[0]),
                strings(&reply[1]),
                strings(&reply[2]),
                strings(&reply[3]),
            ]
        }

        /// (members, users, this node's members).
        fn stats(&mut self, node: &str) -> (i64, i64, i64) {
            let reply = self.run(&self.stats.clone(), node, 0, &[]);
            (int(&reply[2]), int(&reply[3]), int(&reply[4]))
        }
    }

    fn int(value: &Value) -> i64 {
        match value {
            Value::Int(n) => *n,
            other => panic!("{other:?}"),
        }
    }

    fn id(node: &str, conn: u64) -> String {
        format!("{node} {conn:020}")
    }

    #[test]
    fn on_empty_keys_pages_and_stats_answer_nothing_and_write_nothing() {
        let redis = RedisServer::start(false);
        let mut presence = Presence::new(&redis);
        let far = presence.now_ms() + TTL_MS;
        let nothing: [Vec<String>; 4] = Default::default();
        assert_eq!(presence.page("node-a", far, "", 101), nothing);
        assert_eq!(presence.page("node-a", far, "node-z", 1), nothing);
        assert_eq!(presence.stats("node-a"), (0, 0, 0));
        let existing: i64 = presence.conn.exists(&KEYS[..]).unwrap();
        assert_eq!(existing, 0, "reading created keys");
    }

    /// 2,500 members (more than the 1,000 the page reads their JSON by): one page holds them
    /// all in id order, each with its own JSON, and a cursor starts the next page after it.
    #[test]
    fn the_largest_page_is_whole_in_order_and_a_cursor_continues_it() {
        let redis = RedisServer::start(false);
        let mut presence = Presence::new(&redis);
        let members: Vec<(String, &str)> = (0..2500)
            .map(|n| (id("node-a", n), if n % 2 == 0 { "even" } else { "odd" }))
            .collect();
        for part in members.chunks(500) {
            assert_eq!(presence.join("node-a", false, part), 0);
        }
        let [departed, _, ids, jsons] = presence.page("node-b", 0, "", 2501);
        assert!(departed.is_empty());
        let wanted: Vec<&String> = members.iter().map(|(id, _)| id).collect();
        assert_eq!(ids.iter().collect::<Vec<_>>(), wanted);
        assert_eq!(jsons.len(), 2500);
        for (id, json) in ids.iter().zip(&jsons) {
            assert!(json.contains(&format!(r#""id":"{id}""#)), "{id}: {json}");
        }
        let [_, _, next, _] = presence.page("node-b", 0, &ids[999], 1001);
        assert_eq!(next.len(), 1001);
        assert_eq!(next[0], ids[1000]);
        assert_eq!(next[1000], ids[2000]);
        assert_eq!(presence.stats("node-a"), (2500, 2, 2500));
        assert_eq!(presence.stats("node-b"), (2500, 2, 0));
    }

    /// A node whose liveness entry expired: its members stay while the reader may not judge
    /// (its registry is not steady: judge-until 0), and go, each a departure `e`, each user
    /// a crossing to absent, the node buried, once it may; the node's next write that
    /// expected to be known is told it was lost.
    #[test]
    fn an_expired_node_is_dropped_only_by_a_node_that_may_judge() {
        let redis = RedisServer::start(false);
        let mut presence = Presence::new(&redis);
        let members = [
            (id("node-a", 1), "u1"),
            (id("node-a", 2), "u1"),
            (id("node-a", 3), "u2"),
        ];
        assert_eq!(presence.join("node-a", false, &members), 0);
        assert_eq!(
            presence.join("node-b", false, &[(id("node-b", 1), "u3")]),
            0
        );
        let past = (presence.now_ms() - 1).to_string();
        let _: () = presence.conn.hset(KEYS[3], "node-a", &past).unwrap();

        let [departed, _, ids, _] = presence.page("node-b", 0, "", 10);
        assert!(departed.is_empty(), "{departed:?}");
        assert_eq!(ids.len(), 4);

        let far = presence.now_ms() + TTL_MS;
        let [departed, mut crossings, ids, _] = presence.page("node-b", far, "", 10);
        assert_eq!(departed.len(), 3, "{departed:?}");
        assert!(
            departed.iter().all(|json| json.starts_with("e{")),
            "{departed:?}"
        );
        crossings.sort();
        assert_eq!(crossings, ["-u1", "-u2"]);
        assert_eq!(ids, [id("node-b", 1)]);
        let buried: bool = presence.conn.hexists(KEYS[3], "~node-a").unwrap();
        let alive: bool = presence.conn.hexists(KEYS[3], "node-a").unwrap();
        assert!(buried && !alive);
        assert_eq!(presence.stats("node-b"), (1, 1, 1));

        assert_eq!(
            presence.join("node-a", true, &[(id("node-a", 4), "u1")]),
            1,
            "told it was lost"
        );
    }
}

/// The occupancy scripts through `EVAL` on a real redis-server, as
/// `cluster::redis::occupancy` calls them: KEYS the index set then one hash per channel
/// (node → incarnation, `@node` → the memo of its last batch, `#` → the last event's
/// sequence); each answer `o<seq>` (occupied), `v<seq>` (vacated) or `` per channel.
mod occupancy {
    use redis::{Commands as _, Script};

    use crate::redis_server::RedisServer;

    const COMMON: &str = include_str!("../../src/cluster/redis/lua/occupancy_common.lua");
    const INDEX: &str = "occ:index";
    const MEMO_TTL_MS: u64 = 60_000;

    struct Occupancy {
        conn: redis::Connection,
        apply: Script,
        forget: Script,
    }

    impl Occupancy {
        fn new(redis: &RedisServer) -> Occupancy {
            let script = |body: &str| Script::new(&format!("{COMMON}{body}"));
            Occupancy {
                conn: super::connect(redis),
                apply: script(include_str!(
                    "../../src/cluster/redis/lua/occupancy_apply.lua"
                )),
                forget: script(include_str!(
                    "../../src/cluster/redis/lua/occupancy_forget.lua"
                )),
            }
        }

        /// `node` (incarnation `inc`) applies batch `batch` of (`+`/`-`, channel).
        fn apply(
            &mut self,
            node: &str,
            inc: &str,
            batch: u64,
            changes: &[(&str, &str)],
        ) -> Vec<String> {
            let mut invocation = self.apply.prepare_invoke();
            invocation.key(INDEX);
            for (_, channel) in changes {
                invocation.key(format!("occ:{channel}"));
            }
            invocation.arg(node).arg(inc).arg(batch).arg(MEMO_TTL_MS);
            for (op, channel) in changes {
                invocation.arg(*op).arg(*channel);
            }
            invocation.invoke(&mut self.conn).unwrap()
        }

        /// `by` forgets the dead `node` (incarnation `inc`) in `channels`.
        fn forget(&mut self, node: &str, inc: &str, by: &str, channels: &[&str]) -> Vec<String> {
            let mut invocation = self.forget.prepare_invoke();
            invocation.key(INDEX);
            for channel in channels {
                invocation.key(format!("occ:{channel}"));
            }
            invocation
                .arg(node)
                .arg(inc)
                .arg(by)
                .arg("9")
                .arg(MEMO_TTL_MS);
            for channel in channels {
                invocation.arg(*channel);
            }
            invocation.invoke(&mut self.conn).unwrap()
        }
    }

    fn seq(event: &str) -> u64 {
        event[1..].parse().unwrap()
    }

    /// A channel is occupied by its first node and vacated by its last, each event once with
    /// a rising sequence; a batch sent again (a retry after a timeout) answers what it did
    /// the first time and counts nothing twice; an older batch than the node's last is a
    /// no-op; a `-` on a channel nobody holds is nothing.
    #[test]
    fn occupied_by_the_first_vacated_by_the_last_and_retries_count_once() {
        let redis = RedisServer::start(false);
        let mut occupancy = Occupancy::new(&redis);
        assert_eq!(occupancy.apply("a", "1", 1, &[("-", "empty")]), [""]);

        let occupied = occupancy.apply("a", "1", 2, &[("+", "room")]);
        assert!(occupied[0].starts_with('o'), "{occupied:?}");
        assert_eq!(
            occupancy.apply("a", "1", 2, &[("+", "room")]),
            occupied,
            "a retry"
        );
        assert_eq!(occupancy.apply("b", "7", 1, &[("+", "room")]), [""]);
        assert_eq!(occupancy.apply("a", "1", 3, &[("-", "room")]), [""]);
        assert_eq!(
            occupancy.apply("a", "1", 2, &[("+", "room")]),
            [""],
            "older batch"
        );
        let held: bool = occupancy.conn.hexists("occ:room", "a").unwrap();
        assert!(!held, "an older batch changed nothing");
        let vacated = occupancy.apply("b", "7", 2, &[("-", "room")]);
        assert!(vacated[0].starts_with('v'), "{vacated:?}");
        assert!(seq(&vacated[0]) > seq(&occupied[0]));
        assert_eq!(
            occupancy.apply("b", "7", 2, &[("-", "room")]),
            vacated,
            "a retry"
        );
        let ttl: i64 = occupancy.conn.pttl("occ:room").unwrap();
        assert!(
            ttl > 0 && ttl <= MEMO_TTL_MS as i64,
            "an empty channel's hash expires: {ttl}"
        );
    }

    /// A dead node's channels: vacated where it was the last, left occupied where another
    /// node is, untouched when the incarnation is not the one held (it came back); forgetting
    /// again answers the same. Another node's memo older than its time is pruned.
    #[test]
    fn a_dead_node_is_forgotten_once_and_only_in_its_incarnation() {
        let redis = RedisServer::start(false);
        let mut occupancy = Occupancy::new(&redis);
        occupancy.apply("a", "1", 1, &[("+", "alone"), ("+", "shared")]);
        occupancy.apply("b", "7", 1, &[("+", "shared")]);
        let _: () = occupancy.conn.hset("occ:shared", "@old", "1:1::5").unwrap();

        assert_eq!(
            occupancy.forget("a", "2", "b", &["alone"]),
            [""],
            "not its incarnation"
        );
        let forgotten = occupancy.forget("a", "1", "b", &["alone", "shared"]);
        assert!(forgotten[0].starts_with('v'), "{forgotten:?}");
        assert_eq!(forgotten[1], "");
        assert_eq!(
            occupancy.forget("a", "1", "b", &["alone", "shared"]),
            forgotten,
            "again"
        );
        let a_in_shared: bool = occupancy.conn.hexists("occ:shared", "a").unwrap();
        let old_memo: bool = occupancy.conn.hexists("occ:shared", "@old").unwrap();
        assert!(!a_in_shared && !old_memo);
    }
}

/// The bus's read script (`streams_history.lua` then `bus_read.lua`) through `EVAL`, as
/// `cluster::redis::scripts` calls it: KEYS a channel's meta hash, history stream, born key,
/// changes and open sets (and, when subscribing, the interest hash); ARGV the first entry
/// id to read (`` for the newest), the page, the state and text prefixes (and the node and
/// interest ttl). The answer: epoch, seq, Redis's time, entries, born, floor, whether the
/// history exists, states, lost.
mod bus_read {
    use redis::{Commands as _, Script, Value};

    use crate::redis_server::RedisServer;

    const KEYS: [&str; 5] = ["meta", "hist", "born", "chg", "opn"];

    fn read(conn: &mut redis::Connection, start: &str, limit: usize, interest: bool) -> Vec<Value> {
        let script = Script::new(&format!(
            "{}{}",
            include_str!("../../src/cluster/redis/lua/streams_history.lua"),
            include_str!("../../src/cluster/redis/lua/bus_read.lua")
        ));
        let mut invocation = script.prepare_invoke();
        for key in KEYS {
            invocation.key(key);
        }
        invocation.arg(start).arg(limit).arg("m:").arg("x:");
        if interest {
            invocation.key("interest").arg("node-a").arg(30_000);
        }
        match invocation.invoke(conn).unwrap() {
            Value::Array(reply) => reply,
            other => panic!("{other:?}"),
        }
    }

    fn text(value: &Value) -> String {
        match value {
            Value::BulkString(bytes) => String::from_utf8(bytes.clone()).unwrap(),
            Value::Int(n) => n.to_string(),
            other => panic!("{other:?}"),
        }
    }

    /// The entries' ids, as read.
    fn ids(value: &Value) -> Vec<String> {
        let Value::Array(entries) = value else {
            panic!("{value:?}")
        };
        entries
            .iter()
            .map(|entry| match entry {
                Value::Array(pair) => text(&pair[0]),
                other => panic!("{other:?}"),
            })
            .collect()
    }

    /// A channel that never was: no epoch, nothing read, no key written but this node's
    /// interest when it subscribes.
    #[test]
    fn a_channel_that_never_was_reads_empty_and_writes_only_interest() {
        let redis = RedisServer::start(false);
        let mut conn = super::connect(&redis);
        let reply = read(&mut conn, "", 100, false);
        assert_eq!(text(&reply[0]), "");
        assert_eq!(text(&reply[1]), "0");
        assert!(ids(&reply[3]).is_empty());
        assert_eq!(
            (text(&reply[5]), text(&reply[6]), text(&reply[8])),
            ("0".into(), "0".into(), "0".into())
        );
        let existing: i64 = conn.exists(&KEYS[..]).unwrap();
        assert_eq!(existing, 0);
        read(&mut conn, "5-0", 100, true);
        let keys: Vec<String> = conn.keys("*").unwrap();
        assert_eq!(keys, ["interest"]);
        let until: u64 = conn.hget("interest", "node-a").unwrap();
        assert!(until > 30_000);
    }

    /// 3,000 messages, the oldest 500 trimmed: the newest page is the page and one more
    /// (the caller's sign there is more), newest first; a page from an id reads on from it;
    /// the floor is below the oldest kept.
    #[test]
    fn the_largest_page_reads_one_more_and_the_floor_follows_the_trim() {
        let redis = RedisServer::start(false);
        let mut conn = super::connect(&redis);
        let _: () = conn
            .hset_multiple("meta", &[("e", "00000000000000aa"), ("s", "3000")])
            .unwrap();
        let mut pipe = redis::pipe();
        for seq in 1..=3000 {
            pipe.cmd("XADD")
                .arg("hist")
                .arg(format!("{seq}-0"))
                .arg("d")
                .arg(seq)
                .arg("t")
                .arg(1)
                .ignore();
        }
        let _: () = pipe.query(&mut conn).unwrap();
        let _: () = redis::cmd("XTRIM")
            .arg("hist")
            .arg("MINID")
            .arg("501-0")
            .query(&mut conn)
            .unwrap();

        let reply = read(&mut conn, "", 1000, false);
        assert_eq!(
            (text(&reply[0]), text(&reply[1])),
            ("00000000000000aa".into(), "3000".into())
        );
        let newest = ids(&reply[3]);
        assert_eq!(newest.len(), 1001);
        assert_eq!(
            (newest[0].as_str(), newest[1000].as_str()),
            ("3000-0", "2000-0")
        );
        assert_eq!(text(&reply[5]), "500", "the floor");
        assert_eq!(text(&reply[6]), "1", "the history exists");

        let on = ids(&read(&mut conn, "2001-0", 1000, false)[3]);
        assert_eq!(on.len(), 1000);
        assert_eq!((on[0].as_str(), on[999].as_str()), ("2001-0", "3000-0"));
        let trimmed = ids(&read(&mut conn, "1-0", 10, false)[3]);
        assert_eq!(
            trimmed[0], "501-0",
            "a read from below the floor starts at the oldest kept"
        );
    }
}

/// The publish script (`bus_route.lua`, `streams_history.lua`, `bus_publish.lua`) through
/// `EVAL`, as `cluster::redis::scripts` calls it: KEYS the channel's meta, history, the
/// partition's bus (log), born, interest, and the five keys of messages with ids; ARGV the
/// data, a random epoch, the history size, the state ttl, the bus's length, the channel, the
/// history ttl, the bus's age, the inbox prefix, the interest ttl, the message and text
/// prefixes, the dedupe window. The answer: the channel's epoch and the message's seq.
mod bus_publish {
    use redis::{Commands as _, Script};

    use crate::redis_server::RedisServer;

    const KEYS: [&str; 10] = [
        "meta", "hist", "bus", "born", "interest", "ids", "idt", "chg", "opn", "open",
    ];

    fn publish(
        conn: &mut redis::Connection,
        data: &str,
        epoch: &str,
        history: usize,
    ) -> (String, u64) {
        let script = Script::new(&format!(
            "{}{}{}",
            include_str!("../../src/cluster/redis/lua/bus_route.lua"),
            include_str!("../../src/cluster/redis/lua/streams_history.lua"),
            include_str!("../../src/cluster/redis/lua/bus_publish.lua")
        ));
        let mut invocation = script.prepare_invoke();
        for key in KEYS {
            invocation.key(key);
        }
        invocation
            .arg(data)
            .arg(epoch)
            .arg(history)
            .arg(600_000)
            .arg(10_000)
            .arg("chat")
            .arg(600_000)
            .arg(600_000)
            .arg("inbox:")
            .arg(60_000)
            .arg("m:")
            .arg("x:")
            .arg(60_000);
        invocation.invoke(conn).unwrap()
    }

    /// The ids of a stream's entries, oldest first.
    fn ids(conn: &mut redis::Connection, key: &str) -> Vec<String> {
        let entries: Vec<(String, Vec<(String, String)>)> = redis::cmd("XRANGE")
            .arg(key)
            .arg("-")
            .arg("+")
            .query(conn)
            .unwrap();
        entries.into_iter().map(|(id, _)| id).collect()
    }

    /// A channel that never was gets the epoch the publish brings and seq 1, its born key,
    /// one history entry and one log entry; later publishes keep that epoch whatever they
    /// bring and number on; history keeps exactly its size, newest last.
    #[test]
    fn the_first_publish_founds_the_channel_and_history_keeps_its_size() {
        let redis = RedisServer::start(false);
        let mut conn = super::connect(&redis);
        assert_eq!(
            publish(&mut conn, "1", "00000000000000aa", 3),
            ("00000000000000aa".into(), 1)
        );
        let born: bool = conn.exists("born").unwrap();
        assert!(born, "the born key is written with the channel");
        for n in 2..=5 {
            let (epoch, seq) = publish(&mut conn, &n.to_string(), "00000000000000bb", 3);
            assert_eq!((epoch.as_str(), seq), ("00000000000000aa", n));
        }
        assert_eq!(ids(&mut conn, "hist"), ["3-0", "4-0", "5-0"]);
        assert_eq!(
            ids(&mut conn, "bus").len(),
            5,
            "the log holds every message"
        );
        let ttl: i64 = conn.pttl("hist").unwrap();
        assert!(ttl > 0, "history expires: {ttl}");
    }

    /// History size 0: no history key at all, the log and the numbering go on.
    #[test]
    fn without_history_only_the_log_is_written() {
        let redis = RedisServer::start(false);
        let mut conn = super::connect(&redis);
        publish(&mut conn, "1", "00000000000000aa", 0);
        assert_eq!(publish(&mut conn, "2", "00000000000000aa", 0).1, 2);
        let hist: bool = conn.exists("hist").unwrap();
        assert!(!hist);
        assert_eq!(ids(&mut conn, "bus").len(), 2);
    }

    /// The entry goes to the inbox of every node whose interest has not expired, under the
    /// log's id; an expired interest is forgotten and its inbox not written.
    #[test]
    fn a_publish_reaches_the_inboxes_of_live_interest_only() {
        let redis = RedisServer::start(false);
        let mut conn = super::connect(&redis);
        let _: () = conn
            .hset_multiple("interest", &[("node-a", u64::MAX / 2), ("node-b", 1)])
            .unwrap();
        publish(&mut conn, "1", "00000000000000aa", 3);
        let log = ids(&mut conn, "bus");
        assert_eq!(ids(&mut conn, "inbox:node-a"), log, "under the log's id");
        let stale: bool = conn.exists("inbox:node-b").unwrap();
        let kept: bool = conn.hexists("interest", "node-b").unwrap();
        assert!(!stale && !kept, "expired interest forgotten, not routed");
    }
}
