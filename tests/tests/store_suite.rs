#![allow(clippy::unwrap_used, clippy::expect_used)]
//! One artifact-store test suite, run against the local backend and against a
//! real S3-compatible server (s3s-fs) on 127.0.0.1.

use lineage::{
    ArtifactStore, Dep, LineageError, LocalStore, LockFile, Params, Reason, Runner, StageDef,
    StageReport, content_hash,
};
use testkit::S3TestServer;

fn suite(store: &dyn ArtifactStore) {
    // Absent objects.
    assert!(matches!(
        store.get("a/missing.bin"),
        Err(LineageError::NotFound(_))
    ));
    assert_eq!(store.hash("a/missing.bin").unwrap(), None);
    assert!(!store.exists("a/missing.bin").unwrap());

    // Round trip and content hash.
    let hash = store.put("a/one.json", b"{\"x\":1}").unwrap();
    assert_eq!(hash, content_hash(b"{\"x\":1}"));
    assert_eq!(store.get("a/one.json").unwrap(), b"{\"x\":1}");
    assert_eq!(store.hash("a/one.json").unwrap(), Some(hash.clone()));
    assert!(store.exists("a/one.json").unwrap());

    // Overwrite replaces content and hash.
    let hash2 = store.put("a/one.json", b"{\"x\":2}").unwrap();
    assert_ne!(hash, hash2);
    assert_eq!(store.get("a/one.json").unwrap(), b"{\"x\":2}");
    assert_eq!(store.hash("a/one.json").unwrap(), Some(hash2));

    // Binary payload of a few MB survives unchanged.
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    store.put("b/c/big.bin", &big).unwrap();
    assert_eq!(store.get("b/c/big.bin").unwrap(), big);

    // Listing by prefix, sorted, keys relative to the store root.
    store.put("a/two.json", b"2").unwrap();
    store.put("ab.json", b"3").unwrap();
    assert_eq!(store.list("a/").unwrap(), vec!["a/one.json", "a/two.json"]);
    assert_eq!(
        store.list("").unwrap(),
        vec!["a/one.json", "a/two.json", "ab.json", "b/c/big.bin"]
    );

    // Delete, and deleting again is fine.
    store.delete("a/two.json").unwrap();
    store.delete("a/two.json").unwrap();
    assert_eq!(store.list("a/").unwrap(), vec!["a/one.json"]);

    // Unsafe keys are refused before any I/O.
    for bad in ["../x", "/abs", "a//b", "a/./b", "a b", "", "a/"] {
        assert!(
            matches!(store.put(bad, b"x"), Err(LineageError::InvalidKey { .. })),
            "{bad:?} accepted"
        );
    }

    // Concurrent writers to different keys.
    std::thread::scope(|s| {
        for t in 0..4 {
            s.spawn(move || {
                for i in 0..5 {
                    let key = format!("conc/t{t}/{i}.txt");
                    store.put(&key, key.as_bytes()).unwrap();
                }
            });
        }
    });
    let keys = store.list("conc/").unwrap();
    assert_eq!(keys.len(), 20);
    for k in keys {
        assert_eq!(store.get(&k).unwrap(), k.as_bytes());
    }

    // The lock file and the runner work the same on this backend.
    assert_eq!(LockFile::load(store).unwrap().stages.len(), 0);
    let params = Params::from_toml_str("[s]\nk = 1\n").unwrap();
    let def = StageDef {
        name: "copy".into(),
        deps: vec![Dep::Artifact("a/one.json".into())],
        params: vec!["s.k".into()],
        outs: vec!["out/copy.json".into()],
        code_version: "1".into(),
    };
    let body = |w: &mut lineage::StageWriter<'_>| -> Result<StageReport, LineageError> {
        let input = w.get("a/one.json")?;
        w.put("out/copy.json", &input)?;
        Ok(StageReport {
            rows_in: 1,
            rows_out: 1,
            metrics: serde_json::json!({"bytes": input.len()}),
        })
    };
    let mut runner = Runner::new(store, &params, false).unwrap();
    assert!(runner.run(&def, body).unwrap().ran);
    let mut runner = Runner::new(store, &params, false).unwrap();
    let again = runner.run(&def, body).unwrap();
    assert!(!again.ran, "unchanged stage re-ran: {:?}", again.reasons);
    assert_eq!(again.report.metrics["bytes"], 7);
    // Tampering with an output makes it stale.
    store.put("out/copy.json", b"tampered").unwrap();
    let runner = Runner::new(store, &params, false).unwrap();
    assert_eq!(
        runner.check(&def).unwrap(),
        vec![Reason::OutModified("out/copy.json".into())]
    );
}

#[test]
fn local_store_passes_the_suite() {
    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path()).unwrap();
    suite(&store);
    // No temporary files are left behind by atomic writes.
    let leftovers: Vec<_> = walk(dir.path())
        .into_iter()
        .filter(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(".tmp-"))
        })
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn opening_a_local_store_sweeps_stale_temp_files_only() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("etl")).unwrap();
    let stale = dir.path().join("etl/.tmp-killed");
    let fresh = dir.path().join("etl/.tmp-writing");
    std::fs::write(&stale, b"half").unwrap();
    std::fs::write(&fresh, b"half").unwrap();
    let an_hour_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    LocalStore::new(dir.path()).unwrap();
    assert!(!stale.exists());
    assert!(fresh.exists(), "a live writer's temp file was removed");
}

#[test]
fn s3_store_passes_the_suite_against_a_real_server() {
    let server = S3TestServer::start("artifacts").unwrap();
    let store = server.store("artifacts", "runs/r1").unwrap();
    suite(&store);
    // Objects are really on the server, under the prefix.
    let on_disk = server.root().join("artifacts/runs/r1/a/one.json");
    assert_eq!(std::fs::read(on_disk).unwrap(), b"{\"x\":2}");
    // Another prefix is another namespace.
    let other = server.store("artifacts", "runs/r2").unwrap();
    assert!(other.list("").unwrap().is_empty());
    assert_eq!(other.hash("a/one.json").unwrap(), None);
}

#[test]
fn s3_server_rejects_a_wrong_secret() {
    let server = S3TestServer::start("artifacts").unwrap();
    let store = server
        .store_with_secret("artifacts", "wrong-secret")
        .unwrap();
    let err = store.put("x.json", b"{}").unwrap_err();
    assert!(matches!(err, LineageError::S3(_)), "{err}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// An S3 store opened, used and dropped on a tokio worker thread: the
/// blocking client must neither panic ("cannot start a runtime from within a
/// runtime") nor block the caller's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_s3_store_works_inside_an_async_context() {
    let server = S3TestServer::start("asyncbkt").unwrap();
    let store = server.store("asyncbkt", "p").unwrap();
    store.put("a/b.txt", b"hello").unwrap();
    assert_eq!(store.get("a/b.txt").unwrap(), b"hello");
    assert_eq!(store.list("a/").unwrap(), vec!["a/b.txt".to_string()]);
    let lock = store
        .lock("async test", std::time::Duration::from_secs(30))
        .unwrap();
    drop(lock);
    drop(store);
    // The runtime is still healthy.
    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
}

/// A process started while a run held the local lock (the MLP trainer, a
/// scheduled job, anything spawned in that instant before its `exec` closed
/// the descriptor) shares the lock's open file. Ending the run must still
/// free the store at once: the lock is released, not merely closed.
#[test]
fn a_child_sharing_the_lock_file_does_not_keep_the_store_locked() {
    use std::os::fd::{BorrowedFd, OwnedFd};
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let store = LocalStore::new(dir.path().join("s")).unwrap();
    let lock = store
        .lock("first run", std::time::Duration::from_secs(30))
        .unwrap();
    // Still held: a second run is refused, naming the first.
    let err = store
        .lock("second run", std::time::Duration::from_secs(30))
        .unwrap_err();
    assert!(
        matches!(&err, LineageError::Locked { holder, .. } if holder.contains("first run")),
        "{err}"
    );

    let fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            target
                .ends_with(".run.lock")
                .then(|| e.file_name().to_str()?.parse::<i32>().ok())?
        })
        .next()
        .expect("the held lock's file is open in this process");
    #[allow(unsafe_code)]
    // SAFETY: `fd` is the lock's file, open for as long as `lock` lives,
    // which outlives this borrow (the clone is an independent descriptor).
    let shared: OwnedFd = unsafe { BorrowedFd::borrow_raw(fd) }
        .try_clone_to_owned()
        .unwrap();
    let mut child = Command::new("sleep")
        .arg("30")
        .stdin(Stdio::from(shared))
        .spawn()
        .unwrap();

    drop(lock);
    let again = store.lock("second run", std::time::Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    assert!(again.is_ok(), "{:?}", again.err().map(|e| e.to_string()));
}
