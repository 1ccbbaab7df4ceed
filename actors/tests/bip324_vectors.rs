//! BIP324's published test vectors (copied unchanged into `tests/data/bip324/`) against the
//! pieces meshd's v2 transport is built from: ElligatorSwift decoding and the session key
//! derivation (session id). The packet ciphertexts are checked by the independent Python
//! implementation in `tests/peers/v2peer.py`, which `tests/v2_interop.rs` then connects to
//! meshd in both roles: the vectors hold it, and meshd must agree with it byte for byte.

use bip324::SessionKeyMaterial;
use bitcoin::secp256k1::ellswift::{ElligatorSwift, ElligatorSwiftParty};
use bitcoin::secp256k1::{PublicKey, SecretKey};

fn unhex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
        .collect()
}

fn rows(name: &str) -> Vec<std::collections::HashMap<String, String>> {
    let path = format!("{}/tests/data/bip324/{name}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).expect("vector file");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().expect("header").split(',').collect();
    lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            header
                .iter()
                .zip(l.split(','))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

#[test]
fn ellswift_encodings_decode_to_the_published_x() {
    let rows = rows("ellswift_decode_test_vectors.csv");
    assert!(rows.len() > 20);
    for row in rows {
        let ell: [u8; 64] = unhex(&row["ellswift"]).try_into().expect("64 bytes");
        let pk = PublicKey::from_ellswift(ElligatorSwift::from_array(ell));
        let x = pk.x_only_public_key().0.serialize();
        assert_eq!(x.to_vec(), unhex(&row["x"]), "{}", row["comment"]);
    }
}

#[test]
fn session_ids_match_the_published_handshakes() {
    let rows = rows("packet_encoding_test_vectors.csv");
    assert!(rows.len() >= 6);
    let mainnet = [0xf9, 0xbe, 0xb4, 0xd9];
    for row in rows {
        let secret = SecretKey::from_slice(&unhex(&row["in_priv_ours"])).expect("key");
        let ours = ElligatorSwift::from_array(unhex(&row["in_ellswift_ours"]).try_into().unwrap());
        let theirs =
            ElligatorSwift::from_array(unhex(&row["in_ellswift_theirs"]).try_into().unwrap());
        let (a, b, party) = if row["in_initiating"] == "1" {
            (ours, theirs, ElligatorSwiftParty::A)
        } else {
            (theirs, ours, ElligatorSwiftParty::B)
        };
        let keys = SessionKeyMaterial::from_ecdh(a, b, secret, party, mainnet).expect("ecdh");
        assert_eq!(
            keys.session_id.to_vec(),
            unhex(&row["out_session_id"]),
            "vector {}",
            row["in_idx"]
        );
    }
}
