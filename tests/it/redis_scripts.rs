//! Every Lua script the Redis bus runs (`src/cluster/redis/lua/*.lua`) compiles in a real
//! redis-server: a syntax error in one fails here, not on the first cluster that runs it.
//! What each script does is tested where its feature is (`revoke`, `user_limit`,
//! `publish_rates` run theirs through `EVAL` on their edge cases; the bus, presence and
//! occupancy scripts run under the cluster tests).

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
