//! The HTTP API and the generation rules, through a real bound server.

use std::net::SocketAddr;

use lorem::generate::{Generator, Kind, LoremError, LoremRequest};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde_json::Value;

const ID: &str = "api-test-1";

/// Serves the router on a free loopback port for the rest of the test.
async fn serve() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("local addr");
    tokio::spawn(async move {
        axum::serve(listener, lorem::http::router(ID.to_owned()))
            .await
            .expect("serve");
    });
    addr
}

struct Answer {
    status: u16,
    instance_id: Option<String>,
    content_type: Option<String>,
    body: Value,
}

async fn call(method: reqwest::Method, addr: SocketAddr, path: &str) -> Answer {
    let response = reqwest::Client::new()
        .request(method, format!("http://{addr}{path}"))
        .send()
        .await
        .expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let status = response.status().as_u16();
    let instance_id = header("x-instance-id");
    let content_type = header("content-type");
    let text = response.text().await.expect("body");
    let body = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: body {text:?} is not JSON: {e}"));
    Answer {
        status,
        instance_id,
        content_type,
        body,
    }
}

async fn post(addr: SocketAddr, path: &str) -> Answer {
    call(reqwest::Method::POST, addr, path).await
}

fn message(answer: &Answer) -> &str {
    answer.body["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no message in {}", answer.body))
}

fn error(answer: &Answer) -> &str {
    answer.body["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error in {}", answer.body))
}

#[tokio::test]
async fn the_three_kinds_answer_200_json_in_any_case() {
    let addr = serve().await;
    for path in [
        "/lorem/word/1/10",
        "/lorem/WORD/1/10",
        "/lorem/Sentence/3/5",
        "/lorem/paragraph/1/3",
        "/lorem/PaRaGrApH/2/2",
    ] {
        let answer = post(addr, path).await;
        assert_eq!(answer.status, 200, "{path}: {}", answer.body);
        assert_eq!(answer.instance_id.as_deref(), Some(ID), "{path}");
        assert!(
            answer
                .content_type
                .as_deref()
                .is_some_and(|c| c.starts_with("application/json")),
            "{path}: {:?}",
            answer.content_type
        );
        assert!(!message(&answer).is_empty(), "{path}");
        assert_eq!(answer.body.as_object().map(|o| o.len()), Some(1), "{path}");
    }
}

#[tokio::test]
async fn words_have_lengths_within_the_bounds() {
    let addr = serve().await;
    for (min, max) in [(1, 1), (3, 5), (8, 12), (2, 64)] {
        for _ in 0..20 {
            let answer = post(addr, &format!("/lorem/word/{min}/{max}")).await;
            let word = message(&answer);
            let letters = word.chars().count();
            assert!(
                (min..=max).contains(&letters),
                "{word:?} has {letters} letters, not {min}..={max}"
            );
            assert!(word.chars().all(char::is_alphabetic), "{word:?}");
        }
    }
}

#[tokio::test]
async fn sentences_have_word_counts_within_the_bounds() {
    let addr = serve().await;
    for (min, max) in [(1, 1), (2, 7), (50, 60), (1000, 1000)] {
        for _ in 0..10 {
            let answer = post(addr, &format!("/lorem/sentence/{min}/{max}")).await;
            let sentence = message(&answer);
            let words = sentence.split_whitespace().count();
            assert!(
                (min..=max).contains(&words),
                "{words} words, not {min}..={max}: {sentence:?}"
            );
            assert!(sentence.ends_with('.'), "{sentence:?}");
            assert!(
                sentence.chars().next().is_some_and(char::is_uppercase),
                "{sentence:?}"
            );
        }
    }
}

#[tokio::test]
async fn paragraphs_have_sentence_counts_within_the_bounds() {
    let addr = serve().await;
    for (min, max) in [(1, 1), (2, 5), (100, 100)] {
        let answer = post(addr, &format!("/lorem/paragraph/{min}/{max}")).await;
        let paragraph = message(&answer);
        let sentences = paragraph
            .split_whitespace()
            .filter(|w| w.ends_with('.'))
            .count();
        assert!(
            (min..=max).contains(&sentences),
            "{sentences} sentences, not {min}..={max}"
        );
    }
}

#[tokio::test]
async fn every_bad_input_is_a_400_naming_the_problem() {
    let addr = serve().await;
    let longest = Generator::new().word_lengths().1;
    let cases: Vec<(String, String)> = vec![
        (
            "/lorem/words/1/2".into(),
            "unknown type \"words\"; expected one of word, sentence, paragraph".into(),
        ),
        (
            "/lorem/word/abc/5".into(),
            "min \"abc\" is not a number".into(),
        ),
        (
            "/lorem/word/1/5x".into(),
            "max \"5x\" is not a number".into(),
        ),
        (
            "/lorem/word/1.5/5".into(),
            "min \"1.5\" is not a number".into(),
        ),
        (
            "/lorem/word/0/5".into(),
            "min must be at least 1, got 0".into(),
        ),
        (
            "/lorem/sentence/1/0".into(),
            "max must be at least 1, got 0".into(),
        ),
        (
            "/lorem/sentence/-3/5".into(),
            "min must be at least 1, got -3".into(),
        ),
        (
            "/lorem/sentence/1/99999999999999999999".into(),
            "max \"99999999999999999999\" is not a number in range".into(),
        ),
        (
            "/lorem/sentence/-99999999999999999999/5".into(),
            "min must be at least 1".into(),
        ),
        (
            "/lorem/word/5/3".into(),
            "min 5 is larger than max 3".into(),
        ),
        (
            "/lorem/word/1/65".into(),
            "max 65 is above the cap for word: at most 64 letters".into(),
        ),
        (
            "/lorem/sentence/1/1001".into(),
            "max 1001 is above the cap for sentence: at most 1000 words".into(),
        ),
        (
            "/lorem/paragraph/1/101".into(),
            "max 101 is above the cap for paragraph: at most 100 sentences".into(),
        ),
        (
            "/lorem/word/30/40".into(),
            format!("no word has 30..40 letters; words have 1..{longest} letters"),
        ),
        ("/lorem/%FF/1/2".into(), "bad path".into()),
    ];
    for (path, expected) in cases {
        let answer = post(addr, &path).await;
        assert_eq!(answer.status, 400, "{path}: {}", answer.body);
        assert_eq!(answer.instance_id.as_deref(), Some(ID), "{path}");
        let message = error(&answer);
        assert!(
            message.contains(&expected),
            "{path}: {message:?} should contain {expected:?}"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_are_json_errors() {
    let addr = serve().await;
    let cases = [
        (reqwest::Method::GET, "/nope", 404),
        (reqwest::Method::POST, "/lorem/word/1", 404),
        (reqwest::Method::POST, "/lorem/word/1/2/3", 404),
        (reqwest::Method::GET, "/lorem/word/1/2", 405),
        (reqwest::Method::DELETE, "/health", 405),
    ];
    for (method, path, status) in cases {
        let answer = call(method.clone(), addr, path).await;
        assert_eq!(answer.status, status, "{method} {path}");
        assert_eq!(answer.instance_id.as_deref(), Some(ID), "{method} {path}");
        assert!(!error(&answer).is_empty());
    }
}

#[tokio::test]
async fn health_says_true_with_the_instance_id() {
    let addr = serve().await;
    let answer = call(reqwest::Method::GET, addr, "/health").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, serde_json::json!({ "status": true }));
    assert_eq!(answer.instance_id.as_deref(), Some(ID));
}

#[tokio::test]
async fn a_bare_router_is_ready_with_the_instance_id() {
    // Only a server (lorem::server::start) has a registration to wait for;
    // its /ready is tested in tests/server.rs and tests/binary.rs.
    let addr = serve().await;
    let answer = call(reqwest::Method::GET, addr, "/ready").await;
    assert_eq!(answer.status, 200);
    assert_eq!(
        answer.body,
        serde_json::json!({ "status": true, "registered": true })
    );
    assert_eq!(answer.instance_id.as_deref(), Some(ID));
}

#[test]
fn seeded_generation_is_deterministic() {
    let generator = Generator::new();
    for (kind, min, max) in [
        ("word", "2", "9"),
        ("sentence", "5", "30"),
        ("paragraph", "2", "4"),
    ] {
        let request = LoremRequest::parse(kind, min, max).expect("valid request");
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..5)
                .map(|_| generator.generate(&request, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42), "{kind}");
        assert_ne!(run(42), run(43), "{kind}");
    }
}

#[test]
fn parse_checks_in_order_and_keeps_the_values() {
    assert_eq!(
        LoremRequest::parse(" Word ", "2", "5"),
        Ok(LoremRequest {
            kind: Kind::Word,
            min: 2,
            max: 5
        })
    );
    assert!(matches!(
        LoremRequest::parse("nope", "x", "y"),
        Err(LoremError::UnknownKind { .. })
    ));
    assert!(matches!(
        LoremRequest::parse("word", "x", "0"),
        Err(LoremError::NotANumber { bound: "min", .. })
    ));
    assert!(matches!(
        LoremRequest::parse("sentence", "1", "1000"),
        Ok(LoremRequest { max: 1000, .. })
    ));
}

#[tokio::test]
async fn metrics_count_requests_by_type_and_status_with_a_latency_histogram() {
    let addr = serve().await;
    for path in [
        "/lorem/sentence/1/5",
        "/lorem/sentence/2/6",
        "/lorem/word/3/8",
        "/lorem/word/9/2",
        "/lorem/poem/1/2",
    ] {
        post(addr, path).await;
    }
    let response = reqwest::Client::new()
        .get(format!("http://{addr}/metrics"))
        .send()
        .await
        .expect("request");
    assert_eq!(response.status(), 200);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    assert_eq!(response.headers()["x-instance-id"], ID);
    let text = response.text().await.expect("body");
    for line in [
        r#"lorem_requests_total{type="sentence",status="200"} 2"#,
        r#"lorem_requests_total{type="word",status="200"} 1"#,
        r#"lorem_requests_total{type="word",status="400"} 1"#,
        r#"lorem_requests_total{type="invalid",status="400"} 1"#,
        r#"lorem_request_duration_seconds_count{type="sentence"} 2"#,
        "# TYPE lorem_request_duration_seconds histogram",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "{line} missing in:\n{text}"
        );
    }
    assert!(
        text.contains(r#"lorem_request_duration_seconds_bucket{type="word",le="+Inf"} 2"#),
        "{text}"
    );
}
