//! `open_store("s3://...")` takes its endpoint and credentials from the
//! standard AWS environment variables. Alone in its file: it sets variables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use testkit::S3TestServer;

#[test]
fn open_store_reads_the_endpoint_from_the_standard_environment() {
    let server = S3TestServer::start("bkt").unwrap();
    // Only this test sets these variables.
    unsafe_env(&server.endpoint);
    let store = lineage::open_store("s3://bkt/some/prefix").unwrap();
    assert_eq!(store.location(), "s3://bkt/some/prefix");
    store.put("k.txt", b"v").unwrap();
    assert!(server.root().join("bkt/some/prefix/k.txt").exists());
}

fn unsafe_env(endpoint: &str) {
    #[allow(unsafe_code)]
    // SAFETY: `set_var` is unsafe because another thread may read the
    // environment at the same time; this file holds a single test, so its
    // process has no other test thread.
    unsafe {
        std::env::set_var("AWS_ENDPOINT_URL", endpoint);
        std::env::set_var("AWS_ACCESS_KEY_ID", testkit::ACCESS_KEY);
        std::env::set_var("AWS_SECRET_ACCESS_KEY", testkit::SECRET_KEY);
        std::env::set_var("AWS_REGION", "us-east-1");
    }
}
