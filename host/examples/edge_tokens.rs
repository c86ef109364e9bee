//! Tokens for `bench/edge-http.sh`: signs `COUNT` RS256 JWTs with the fixture key
//! `tests/fixtures/keys/rsa-a.pem` (distinct `jti`, valid for a day), writes them one per
//! line to `OUT`, writes the matching key set to `JWKS`, and prints the raw verification
//! rate of those same tokens with `jsonwebtoken` alone on one thread — the figure the
//! script reports unique-token resolves beside.
//!
//! `cargo run --release -p gatehouse --example edge_tokens -- COUNT ISSUER EMAIL OUT JWKS`

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::{json, Value};
use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [count, issuer, email, out, jwks_out] = args.as_slice() else {
        eprintln!("usage: edge_tokens COUNT ISSUER EMAIL OUT JWKS");
        std::process::exit(2);
    };
    let count: usize = count.parse().expect("COUNT is a number");
    let keys = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/keys");
    let jwks: Value =
        serde_json::from_str(&std::fs::read_to_string(keys.join("jwks.json")).unwrap()).unwrap();
    let public = jwks["rsa-a"].clone();
    std::fs::write(jwks_out, json!({ "keys": [public.clone()] }).to_string()).unwrap();

    let signing = EncodingKey::from_rsa_pem(&std::fs::read(keys.join("rsa-a.pem")).unwrap())
        .expect("the fixture key is an RSA PEM");
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("rsa-a".into());
    let exp = time::OffsetDateTime::now_utc().unix_timestamp() + 86_400;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let tokens: Vec<String> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let (header, signing) = (&header, &signing);
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| {
                            let claims = json!({ "iss": issuer, "aud": "api", "exp": exp,
                                "jti": format!("bench-{i}"), "email": email, "groups": ["eng"] });
                            jsonwebtoken::encode(header, &claims, signing).unwrap()
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().unwrap())
            .collect()
    });
    let mut file = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    for token in &tokens {
        writeln!(file, "{token}").unwrap();
    }
    file.flush().unwrap();

    let key = DecodingKey::from_rsa_components(
        public["n"].as_str().unwrap(),
        public["e"].as_str().unwrap(),
    )
    .unwrap();
    let mut validation = Validation::new(Algorithm::RS256);
    validation.set_audience(&["api"]);
    validation.set_issuer(&[issuer]);
    let sample = &tokens[..tokens.len().min(20_000)];
    let started = Instant::now();
    for token in sample {
        jsonwebtoken::decode::<Value>(token, &key, &validation).unwrap();
    }
    let rate = sample.len() as f64 / started.elapsed().as_secs_f64();
    println!("raw_rs256_verify_per_second {rate:.0}");
}
