//! meshd as a header source for an independent SPV client: bcoin in SPV mode dials meshd,
//! syncs its chain through getblocks and BIP37 filtered blocks (merkleblock), and reaches
//! meshd's tip.

mod common;

use std::time::{Duration, Instant};

use common::bcoin::Bcoin;
use common::{msg, Meshd};
use serde_json::Value;

fn rpc(bcoin: &Bcoin, method: &str) -> Value {
    let url = format!("http://127.0.0.1:{}/", bcoin.http_port);
    let body = format!(r#"{{"method":"{method}","params":[]}}"#);
    match ureq::post(&url).send(body.as_bytes()) {
        Ok(mut r) => serde_json::from_str(&r.body_mut().read_to_string().unwrap_or_default())
            .unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

#[test]
fn bcoin_spv_syncs_headers_from_meshd() {
    // NETWORK | BLOOM | WITNESS: what bcoin's SPV mode demands of its peer.
    let node = Meshd::start(&["--services", "0xd", "--keep-blocks", "500"]);
    let api = node.api.unwrap();
    let token = node.token();
    let mut r = ureq::post(&format!("http://{api}/v1/generate"))
        .header("Authorization", &format!("Bearer {token}"))
        .header("Content-Type", "application/json")
        .send(br#"{"blocks": 120}"#.as_slice())
        .unwrap();
    let generated: Value = serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap();
    let tip = generated["blocks"][119].as_str().unwrap().to_string();

    let addr = node.addr.unwrap();
    let Some(bcoin) = Bcoin::start(&["--spv".into(), format!("--only={addr}")]) else {
        return;
    };
    node.wait_log("bcoin connects", Duration::from_secs(30), |v| {
        msg(v) == "handshake complete"
            && v["user_agent"]
                .as_str()
                .is_some_and(|a| a.contains("bcoin"))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let height = rpc(&bcoin, "getblockcount")["result"].as_u64().unwrap_or(0);
        if height == 120 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bcoin SPV at height {height}; bcoin said:\n{}",
            bcoin.output()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let best = rpc(&bcoin, "getbestblockhash")["result"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(best, tip);
}
