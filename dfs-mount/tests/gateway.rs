//! dfs-gateway against real S3 clients (the AWS CLI, curl for presigned
//! URLs and raw requests): every operation the gateway serves, the same
//! namespace seen from a FUSE mount, permissions by the key's user, and
//! the attacks it must refuse.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::*;

struct Gateway {
    addr: String,
    proc: Proc,
    _certs: tempfile::TempDir,
}

impl Gateway {
    fn start(cluster: &TestCluster, args: &[&str]) -> Self {
        // A client certificate with the gateway cap, in a directory of its own.
        let certs = tempfile::tempdir().expect("tempdir");
        let out = dfs_cmd("dfs")
            .args([
                "ca",
                "issue",
                "--role",
                "client",
                "gateway",
                "--gateway",
                "--ca",
            ])
            .arg(tls_dir())
            .arg("--out")
            .arg(certs.path())
            .output()
            .expect("dfs ca issue");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::copy(tls_dir().join("ca.crt"), certs.path().join("ca.crt")).expect("ca.crt");
        let log = std::fs::File::create(cluster.dir.path().join("gateway.log")).expect("log");
        let mut child = Command::new(bin("dfs-gateway"))
            .args(["--meta", &cluster.meta_addr(), "--listen", "127.0.0.1:0"])
            .arg("--tls-dir")
            .arg(certs.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn dfs-gateway");
        let line = wait_for_line(
            &mut child,
            "dfs-gateway listening on ",
            Duration::from_secs(30),
        )
        .unwrap_or_else(|e| panic!("{e}: {}", cluster.log("gateway")));
        let addr = line.trim().rsplit(' ').next().expect("address").to_string();
        Self {
            addr,
            proc: Proc {
                child: Some(child),
                name: "dfs-gateway".into(),
            },
            _certs: certs,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

#[derive(Clone)]
struct Key {
    access: String,
    secret: String,
}

fn add_key(cluster: &TestCluster, uid: u32, gid: u32, extra: &[&str]) -> Key {
    let out = dfs_cmd("dfs")
        .args(["keys", "add", "--meta", &cluster.meta_addr(), "--json"])
        .args(["--uid", &uid.to_string(), "--gid", &gid.to_string()])
        .args(extra)
        .output()
        .expect("dfs keys add");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    Key {
        access: v["access_key"].as_str().expect("access key").to_string(),
        secret: v["secret_key"].as_str().expect("secret").to_string(),
    }
}

/// The AWS CLI for one key against the gateway, with no config from the
/// machine it runs on.
struct Aws<'a> {
    url: String,
    key: &'a Key,
}

impl Aws<'_> {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(tool("aws"));
        cmd.arg("--endpoint-url")
            .arg(&self.url)
            .args(args)
            .env("AWS_ACCESS_KEY_ID", &self.key.access)
            .env("AWS_SECRET_ACCESS_KEY", &self.key.secret)
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_MAX_ATTEMPTS", "2");
        cmd
    }

    fn run(&self, args: &[&str]) -> Output {
        self.cmd(args).output().expect("run aws")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "aws {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.ok(args);
        if out.trim().is_empty() {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("aws {args:?}: {e}: {out}"))
    }

    /// Runs a command that must fail with `code` in its message.
    fn fails(&self, args: &[&str], code: &str) {
        let out = self.run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "aws {args:?} succeeded");
        assert!(
            err.contains(code),
            "aws {args:?}: expected {code}, got {err}"
        );
    }
}

/// A client tool from the venv scripts/install-deps.sh fills (the AWS CLI,
/// Python with boto3), else from PATH.
fn tool(name: &str) -> PathBuf {
    let venv = Path::new("/var/tmp/dfs-tools/weed-venv/bin").join(name);
    if venv.exists() {
        venv
    } else {
        PathBuf::from(name)
    }
}

fn md5_hex(path: &Path) -> String {
    let out = sh(&format!("md5sum {}", path.display()));
    out.split_whitespace().next().expect("md5").to_string()
}

fn write_random(dir: &Path, name: &str, len: usize, seed: u64) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, random_bytes(len, seed)).expect("write");
    path
}

fn keys(listing: &serde_json::Value) -> Vec<String> {
    listing["Contents"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["Key"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn prefixes(listing: &serde_json::Value) -> Vec<String> {
    listing["CommonPrefixes"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|o| o["Prefix"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `path` stops existing on the mount within its attribute cache's
/// lifetime: the gateway is another client, and a mount with the default
/// `consistency=read-own` may keep a looked-up entry for a second.
fn goes_from_mount(path: &Path) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    while path.exists() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    true
}

fn curl_status(args: &[&str]) -> (u32, String) {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-D", "-", "-w", "%{http_code}"])
        .args(args)
        .output()
        .expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let code = text
        .lines()
        .last()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    (code, text)
}

/// A presigned PUT URL, made by boto3 (the AWS CLI presigns only GETs).
fn presign_put(gateway: &Gateway, key: &Key, bucket: &str, object: &str) -> String {
    let script = format!(
        "import boto3\n\
         from botocore.client import Config\n\
         c = boto3.client('s3', endpoint_url='{}', aws_access_key_id='{}', \
         aws_secret_access_key='{}', region_name='us-east-1', \
         config=Config(signature_version='s3v4'))\n\
         print(c.generate_presigned_url('put_object', Params={{'Bucket': '{bucket}', 'Key': '{object}'}}, ExpiresIn=300))",
        gateway.url(),
        key.access,
        key.secret
    );
    let out = Command::new(tool("python3"))
        .args(["-c", &script])
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn s3_clients_and_mounts_share_one_namespace() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    let gateway = Gateway::start(&cluster, &[]);
    let root_key = add_key(&cluster, 0, 0, &["--description", "test root"]);
    let alice_key = add_key(&cluster, 1000, 1000, &[]);
    let s3 = Aws {
        url: gateway.url(),
        key: &root_key,
    };
    let alice = Aws {
        url: gateway.url(),
        key: &alice_key,
    };
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();

    // Buckets.
    s3.ok(&["s3api", "create-bucket", "--bucket", "photos"]);
    s3.fails(
        &["s3api", "create-bucket", "--bucket", "photos"],
        "BucketAlreadyOwnedByYou",
    );
    let buckets = s3.json(&["s3api", "list-buckets"]);
    assert!(buckets.to_string().contains("\"photos\""), "{buckets}");
    s3.ok(&["s3api", "head-bucket", "--bucket", "photos"]);
    s3.fails(&["s3api", "head-bucket", "--bucket", "nope"], "404");

    // PUT, HEAD, GET, ranges, metadata.
    let a = write_random(w, "a.bin", 100_000, 1);
    let put = s3.json(&[
        "s3api",
        "put-object",
        "--bucket",
        "photos",
        "--key",
        "2026/a.bin",
        "--body",
        a.to_str().unwrap_or_default(),
        "--content-type",
        "image/png",
        "--metadata",
        "color=blue",
    ]);
    let etag = format!("\"{}\"", md5_hex(&a));
    assert_eq!(put["ETag"].as_str(), Some(etag.as_str()), "{put}");
    let head = s3.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "photos",
        "--key",
        "2026/a.bin",
    ]);
    assert_eq!(head["ContentLength"].as_u64(), Some(100_000), "{head}");
    assert_eq!(head["ContentType"].as_str(), Some("image/png"), "{head}");
    assert_eq!(head["Metadata"]["color"].as_str(), Some("blue"), "{head}");
    assert_eq!(head["ETag"].as_str(), Some(etag.as_str()));
    let got = w.join("got.bin");
    s3.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "2026/a.bin",
        got.to_str().unwrap_or_default(),
    ]);
    assert_eq!(std::fs::read(&got).ok(), std::fs::read(&a).ok());
    s3.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "2026/a.bin",
        "--range",
        "bytes=10-99",
        got.to_str().unwrap_or_default(),
    ]);
    let whole = std::fs::read(&a).expect("a");
    assert_eq!(std::fs::read(&got).ok().as_deref(), Some(&whole[10..100]));
    s3.fails(
        &[
            "s3api",
            "get-object",
            "--bucket",
            "photos",
            "--key",
            "2026/none",
            "/dev/null",
        ],
        "NoSuchKey",
    );
    s3.fails(
        &[
            "s3api",
            "get-object",
            "--bucket",
            "photos",
            "--key",
            "2026/a.bin",
            "--if-none-match",
            &etag,
            "/dev/null",
        ],
        "304",
    );

    // Listings: prefixes, delimiters, pages of one key.
    for (key, seed) in [
        ("2026/b.bin", 2),
        ("2027/c.bin", 3),
        ("top.txt", 4),
        ("2026-notes", 5),
    ] {
        let f = write_random(w, "x", 1000, seed);
        s3.ok(&[
            "s3api",
            "put-object",
            "--bucket",
            "photos",
            "--key",
            key,
            "--body",
            f.to_str().unwrap_or_default(),
        ]);
    }
    let top = s3.json(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "photos",
        "--delimiter",
        "/",
    ]);
    assert_eq!(prefixes(&top), ["2026/", "2027/"], "{top}");
    assert_eq!(keys(&top), ["2026-notes", "top.txt"], "{top}");
    let all = s3.json(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "photos",
        "--page-size",
        "1",
    ]);
    assert_eq!(
        keys(&all),
        [
            "2026-notes",
            "2026/a.bin",
            "2026/b.bin",
            "2027/c.bin",
            "top.txt"
        ],
        "key order, through pages of one key: {all}"
    );
    let v1 = s3.json(&[
        "s3api",
        "list-objects",
        "--bucket",
        "photos",
        "--prefix",
        "2026/",
    ]);
    assert_eq!(keys(&v1), ["2026/a.bin", "2026/b.bin"], "{v1}");

    // Copy shares chunks; the copy reads back the same.
    let copied = s3.json(&[
        "s3api",
        "copy-object",
        "--bucket",
        "photos",
        "--key",
        "copies/a.bin",
        "--copy-source",
        "photos/2026/a.bin",
    ]);
    assert_eq!(
        copied["CopyObjectResult"]["ETag"].as_str(),
        Some(etag.as_str())
    );
    s3.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "copies/a.bin",
        got.to_str().unwrap_or_default(),
    ]);
    assert_eq!(std::fs::read(&got).ok(), std::fs::read(&a).ok());

    // Multipart (the CLI splits above 8 MiB): parts become the object's
    // chunks, not a second copy of them.
    let before = cluster.stats();
    let big = write_random(w, "big.bin", 20 << 20, 6);
    s3.ok(&[
        "s3",
        "cp",
        big.to_str().unwrap_or_default(),
        "s3://photos/big.bin",
    ]);
    let after = cluster.stats();
    let added =
        after["unique_bytes"].as_u64().unwrap_or(0) - before["unique_bytes"].as_u64().unwrap_or(0);
    assert!(
        added < (22 << 20),
        "multipart stored {added} new unique bytes for 20 MiB"
    );
    let head = s3.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "photos",
        "--key",
        "big.bin",
    ]);
    assert!(
        head["ETag"].as_str().unwrap_or_default().ends_with("-3\""),
        "{head}"
    );
    let attributes = s3.json(&[
        "s3api",
        "get-object-attributes",
        "--bucket",
        "photos",
        "--key",
        "big.bin",
        "--object-attributes",
        "ETag",
        "ObjectSize",
        "ObjectParts",
        "StorageClass",
        "--max-parts",
        "2",
    ]);
    assert_eq!(
        attributes["ObjectSize"].as_u64(),
        Some(20 << 20),
        "{attributes}"
    );
    let parts = &attributes["ObjectParts"];
    assert_eq!(parts["TotalPartsCount"].as_u64(), Some(3), "{attributes}");
    assert_eq!(parts["IsTruncated"].as_bool(), Some(true), "{attributes}");
    assert_eq!(
        parts["Parts"][1]["Size"].as_u64(),
        Some(8 << 20),
        "{attributes}"
    );
    assert!(
        attributes["ETag"]
            .as_str()
            .unwrap_or_default()
            .contains("-3"),
        "{attributes}"
    );
    // Parts by number, as parallel downloaders ask for them.
    let part = s3.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "photos",
        "--key",
        "big.bin",
        "--part-number",
        "2",
    ]);
    assert_eq!(part["ContentLength"].as_u64(), Some(8 << 20), "{part}");
    assert_eq!(part["PartsCount"].as_u64(), Some(3), "{part}");
    s3.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "big.bin",
        "--part-number",
        "3",
        got.to_str().unwrap_or_default(),
    ]);
    let big_bytes = std::fs::read(&big).expect("read big");
    assert!(
        std::fs::read(&got).ok().as_deref() == Some(&big_bytes[16 << 20..]),
        "part 3 differs"
    );
    s3.fails(
        &[
            "s3api",
            "head-object",
            "--bucket",
            "photos",
            "--key",
            "big.bin",
            "--part-number",
            "4",
        ],
        "416",
    );
    s3.ok(&[
        "s3",
        "cp",
        "s3://photos/big.bin",
        got.to_str().unwrap_or_default(),
    ]);
    assert_eq!(md5_hex(&got), md5_hex(&big));
    let uploads = s3.json(&["s3api", "list-multipart-uploads", "--bucket", "photos"]);
    assert!(
        uploads["Uploads"].as_array().is_none_or(Vec::is_empty),
        "{uploads}"
    );

    // UploadPartCopy: parts cut from objects, their chunks shared.
    let before = cluster.stats();
    let created = s3.json(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "photos",
        "--key",
        "joined.bin",
    ]);
    let upload_id = created["UploadId"].as_str().expect("upload id").to_string();
    let part_copy = |number: &str, source: &str, range: Option<&str>| -> String {
        let mut args = vec![
            "s3api",
            "upload-part-copy",
            "--bucket",
            "photos",
            "--key",
            "joined.bin",
            "--upload-id",
            &upload_id,
            "--part-number",
            number,
            "--copy-source",
            source,
        ];
        if let Some(range) = range {
            args.extend(["--copy-source-range", range]);
        }
        let reply = s3.json(&args);
        reply["CopyPartResult"]["ETag"]
            .as_str()
            .expect("part ETag")
            .to_string()
    };
    let first = part_copy("1", "photos/big.bin", Some("bytes=1000-5243879"));
    let second = part_copy("2", "photos/2026/a.bin", None);
    let a_bytes = std::fs::read(&a).expect("read a");
    let want: Vec<u8> = [&big_bytes[1000..5_243_880], &a_bytes[..]].concat();
    let range_file = w.join("range.bin");
    std::fs::write(&range_file, &want[..5_242_880]).expect("write range");
    assert_eq!(
        first.trim_matches('"'),
        md5_hex(&range_file),
        "a range's ETag is the MD5 of its bytes"
    );
    assert_eq!(second, etag, "a whole object's part keeps its ETag");
    let parts = w.join("parts.json");
    std::fs::write(
        &parts,
        serde_json::json!({"Parts": [
            {"ETag": first, "PartNumber": 1},
            {"ETag": second, "PartNumber": 2},
        ]})
        .to_string(),
    )
    .expect("write parts.json");
    s3.ok(&[
        "s3api",
        "complete-multipart-upload",
        "--bucket",
        "photos",
        "--key",
        "joined.bin",
        "--upload-id",
        &upload_id,
        "--multipart-upload",
        &format!("file://{}", parts.display()),
    ]);
    s3.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "joined.bin",
        got.to_str().unwrap_or_default(),
    ]);
    assert!(std::fs::read(&got).ok() == Some(want), "joined.bin differs");
    let added = cluster.stats()["unique_bytes"].as_u64().unwrap_or(0)
        - before["unique_bytes"].as_u64().unwrap_or(0);
    assert!(
        added < (1 << 20),
        "part copies stored {added} new unique bytes for 5 MiB"
    );
    s3.ok(&[
        "s3api",
        "delete-object",
        "--bucket",
        "photos",
        "--key",
        "joined.bin",
    ]);

    // Presigned GET.
    let url = s3.ok(&[
        "s3",
        "presign",
        "s3://photos/2026/a.bin",
        "--expires-in",
        "300",
    ]);
    let fetched = Command::new("curl")
        .args(["-sf", url.trim()])
        .output()
        .expect("curl");
    assert!(fetched.status.success());
    assert_eq!(Some(fetched.stdout), std::fs::read(&a).ok());

    // A mount sees what the gateway wrote, and the gateway what it wrote.
    let mount = TestMount::start(&cluster.meta_addr(), &[]);
    let m = &mount.path;
    assert_eq!(
        std::fs::read(m.join("photos/2026/a.bin")).ok(),
        std::fs::read(&a).ok()
    );
    assert_eq!(
        std::fs::read(m.join("photos/big.bin")).ok(),
        std::fs::read(&big).ok()
    );
    std::fs::write(m.join("photos/from-mount.txt"), b"written in a mount\n").expect("write");
    s3.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "from-mount.txt",
        got.to_str().unwrap_or_default(),
    ]);
    assert_eq!(
        std::fs::read(&got).ok().as_deref(),
        Some(&b"written in a mount\n"[..])
    );
    let xattr = sh(&format!(
        "getfattr --only-values -n user.s3 {}",
        m.join("photos/2026/a.bin").display()
    ));
    assert!(xattr.contains("\"color\":\"blue\""), "{xattr}");

    // Objects get what a file created in their directory gets: a
    // set-group-ID directory's group, its default ACL.
    let team = m.join("photos/team");
    std::fs::create_dir(&team).expect("mkdir team");
    sh(&format!(
        "chgrp 50 {0} && chmod 2775 {0} && setfacl -d -m g::rw {0}",
        team.display()
    ));
    s3.ok(&[
        "s3",
        "cp",
        a.to_str().unwrap_or_default(),
        "s3://photos/team/put.bin",
    ]);
    s3.ok(&[
        "s3api",
        "copy-object",
        "--bucket",
        "photos",
        "--key",
        "team/copy.bin",
        "--copy-source",
        "photos/2026/a.bin",
    ]);
    for name in ["put.bin", "copy.bin"] {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(team.join(name)).expect("stat");
        assert_eq!(
            (meta.gid(), meta.mode() & 0o7777),
            (50, 0o664),
            "{name}: the group and mode a create in team/ gives"
        );
    }
    // Elsewhere, the key's group and the umask, as before.
    {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(m.join("photos/2026/a.bin")).expect("stat");
        assert_eq!((meta.gid(), meta.mode() & 0o7777), (0, 0o644));
    }
    for name in ["team/put.bin", "team/copy.bin"] {
        s3.ok(&[
            "s3api",
            "delete-object",
            "--bucket",
            "photos",
            "--key",
            name,
        ]);
    }
    assert!(goes_from_mount(&team), "the emptied prefix goes");

    // Deleting the last object of a prefix removes the prefix.
    s3.ok(&[
        "s3api",
        "delete-object",
        "--bucket",
        "photos",
        "--key",
        "2027/c.bin",
    ]);
    s3.ok(&[
        "s3api",
        "delete-object",
        "--bucket",
        "photos",
        "--key",
        "2027/none",
    ]);
    let top = s3.json(&[
        "s3api",
        "list-objects-v2",
        "--bucket",
        "photos",
        "--delimiter",
        "/",
    ]);
    assert_eq!(prefixes(&top), ["2026/", "copies/"], "{top}");
    assert!(goes_from_mount(&m.join("photos/2027")));
    let batch = s3.json(&[
        "s3api",
        "delete-objects",
        "--bucket",
        "photos",
        "--delete",
        "Objects=[{Key=copies/a.bin},{Key=2026-notes}]",
    ]);
    assert_eq!(
        batch["Deleted"].as_array().map(Vec::len),
        Some(2),
        "{batch}"
    );

    // Permissions: Alice (uid 1000) is "other" everywhere here.
    std::fs::write(m.join("photos/secret.txt"), b"root only").expect("write");
    sh(&format!(
        "chmod 600 {}",
        m.join("photos/secret.txt").display()
    ));
    alice.fails(
        &[
            "s3api",
            "get-object",
            "--bucket",
            "photos",
            "--key",
            "secret.txt",
            "/dev/null",
        ],
        "AccessDenied",
    );
    alice.ok(&[
        "s3api",
        "get-object",
        "--bucket",
        "photos",
        "--key",
        "top.txt",
        got.to_str().unwrap_or_default(),
    ]);
    alice.fails(
        &[
            "s3api",
            "put-object",
            "--bucket",
            "photos",
            "--key",
            "mine.txt",
            "--body",
            a.to_str().unwrap_or_default(),
        ],
        "AccessDenied",
    );
    alice.fails(
        &["s3api", "create-bucket", "--bucket", "alices"],
        "AccessDenied",
    );
    // Given a directory of her own, she writes there, as uid 1000.
    std::fs::create_dir(m.join("photos/alice")).expect("mkdir");
    sh(&format!(
        "chown 1000:1000 {}",
        m.join("photos/alice").display()
    ));
    alice.ok(&[
        "s3api",
        "put-object",
        "--bucket",
        "photos",
        "--key",
        "alice/mine.txt",
        "--body",
        a.to_str().unwrap_or_default(),
    ]);
    let owner = sh(&format!(
        "stat -c %u:%g {}",
        m.join("photos/alice/mine.txt").display()
    ));
    assert_eq!(owner.trim(), "1000:1000");

    // A bucket with objects cannot go; an empty one can.
    s3.fails(
        &["s3api", "delete-bucket", "--bucket", "photos"],
        "BucketNotEmpty",
    );
    s3.ok(&["s3api", "create-bucket", "--bucket", "empty"]);
    s3.ok(&["s3api", "delete-bucket", "--bucket", "empty"]);
    drop(mount);
}

#[test]
fn attacks_on_the_gateway_are_refused() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    let gateway = Gateway::start(&cluster, &["--key-lookup-rate", "5"]);
    let key = add_key(&cluster, 0, 0, &[]);
    let slow_key = add_key(&cluster, 0, 0, &["--request-rate", "2"]);
    let s3 = Aws {
        url: gateway.url(),
        key: &key,
    };
    s3.ok(&["s3api", "create-bucket", "--bucket", "data"]);
    let work = tempfile::tempdir().expect("tempdir");
    let f = write_random(work.path(), "f", 1000, 9);
    s3.ok(&["s3", "cp", f.to_str().unwrap_or_default(), "s3://data/f"]);

    // No signature.
    let (code, _) = curl_status(&[&format!("{}/data/f", gateway.url())]);
    assert_eq!(code, 403, "an unsigned GET");
    let (code, _) = curl_status(&[
        "-X",
        "PUT",
        "--data",
        "x",
        &format!("{}/data/g", gateway.url()),
    ]);
    assert_eq!(code, 403, "an unsigned PUT");
    // A wrong secret, an unknown key.
    let wrong = Key {
        access: key.access.clone(),
        secret: "not-the-secret-at-all-0000000000000000000".into(),
    };
    Aws {
        url: gateway.url(),
        key: &wrong,
    }
    .fails(
        &["s3api", "list-objects-v2", "--bucket", "data"],
        "SignatureDoesNotMatch",
    );
    let unknown = Key {
        access: "NOSUCHKEY0000000000".into(),
        secret: "whatever".into(),
    };
    Aws {
        url: gateway.url(),
        key: &unknown,
    }
    .fails(
        &["s3api", "list-objects-v2", "--bucket", "data"],
        "InvalidAccessKeyId",
    );
    // A flood of made-up keys: past 5 lookups a second they are refused
    // with SlowDown before dfs-meta is asked, and known keys go on.
    let flood = sh(&format!(
        "for i in $(seq 40); do curl -s -o /dev/null -w '%{{http_code}}\\n' \
           -H 'x-amz-content-sha256: e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855' \
           --aws-sigv4 aws:amz:us-east-1:s3 --user FLOOD$i$RANDOM:secret {}/data; done",
        gateway.url()
    ));
    let codes: Vec<&str> = flood.lines().collect();
    assert_eq!(codes.len(), 40, "{flood}");
    assert!(codes.contains(&"503"), "no SlowDown in {codes:?}");
    assert!(
        codes.iter().all(|c| *c == "503" || *c == "403"),
        "{codes:?}"
    );
    s3.ok(&["s3api", "list-objects-v2", "--bucket", "data"]);
    // A presigned URL past its expiry, and one whose path was changed.
    let url = s3.ok(&["s3", "presign", "s3://data/f", "--expires-in", "1"]);
    std::thread::sleep(Duration::from_secs(2));
    let (code, _) = curl_status(&[url.trim()]);
    assert_eq!(code, 403, "an expired presigned URL");
    let url = s3.ok(&["s3", "presign", "s3://data/f", "--expires-in", "300"]);
    let (code, _) = curl_status(&[&url.trim().replace("/data/f", "/data/g")]);
    assert_eq!(code, 403, "a presigned URL for another key");
    // A key over its rate: 503 SlowDown with Retry-After, and the service
    // stays up for everyone else.
    let slow = Aws {
        url: gateway.url(),
        key: &slow_key,
    };
    let urls: Vec<String> = (0..8)
        .map(|_| {
            slow.ok(&["s3", "presign", "s3://data/f"])
                .trim()
                .to_string()
        })
        .collect();
    let mut slowed = 0;
    for u in &urls {
        let (code, head) = curl_status(&[u]);
        if code == 503 {
            assert!(head.to_ascii_lowercase().contains("retry-after:"), "{head}");
            slowed += 1;
        } else {
            assert_eq!(code, 200, "{head}");
        }
    }
    assert!(
        slowed >= 4,
        "only {slowed} of 8 requests at once over 2/s were slowed down"
    );
    s3.ok(&["s3api", "head-object", "--bucket", "data", "--key", "f"]);
    // Oversized request heads.
    let big_header = format!("X-Filler: {}", "a".repeat(100_000));
    let (code, _) = curl_status(&["-H", &big_header, &format!("{}/data/f", gateway.url())]);
    assert_eq!(code, 431, "a 100 KB header");
    // A presigned PUT works; one declaring more than a single PUT may
    // carry is refused before any of it is stored.
    let put_url = presign_put(&gateway, &key, "data", "uploaded");
    let (code, _) = curl_status(&["-X", "PUT", "--data-binary", "presigned body", &put_url]);
    assert_eq!(code, 200, "a presigned PUT");
    let got = work.path().join("got");
    s3.ok(&[
        "s3",
        "cp",
        "s3://data/uploaded",
        got.to_str().unwrap_or_default(),
    ]);
    assert_eq!(
        std::fs::read(&got).ok().as_deref(),
        Some(&b"presigned body"[..])
    );
    let put_url = presign_put(&gateway, &key, "data", "huge");
    let (code, _) = curl_status(&[
        "-X",
        "PUT",
        "-H",
        "Content-Length: 6000000000",
        "--data-binary",
        "x",
        "--max-time",
        "10",
        &put_url,
    ]);
    assert_eq!(code, 400, "a 6 GB PUT");
    // Keys that are not paths.
    s3.fails(
        &[
            "s3api",
            "put-object",
            "--bucket",
            "data",
            "--key",
            "a//b",
            "--body",
            f.to_str().unwrap_or_default(),
        ],
        "InvalidArgument",
    );
    s3.fails(
        &[
            "s3api",
            "put-object",
            "--bucket",
            "data",
            "--key",
            "../etc/passwd",
            "--body",
            f.to_str().unwrap_or_default(),
        ],
        "InvalidArgument",
    );
    // Health, for the load balancer.
    let (code, _) = curl_status(&[&format!("{}/health", gateway.url())]);
    assert_eq!(code, 200);
}

/// A tree, by relative path and content.
fn tree_files(root: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let path = e.expect("entry").path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .expect("prefix")
                    .display()
                    .to_string();
                out.insert(rel, std::fs::read(&path).expect("read"));
            }
        }
    }
    out
}

#[test]
fn s3cmd_and_rclone_sync_a_tree_up_and_back() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    let gateway = Gateway::start(&cluster, &[]);
    let key = add_key(&cluster, 0, 0, &[]);
    let work = tempfile::tempdir().expect("tempdir");
    let src = work.path().join("src");
    make_tree(&src, 150);
    std::fs::remove_file(src.join("link")).expect("no symlinks: S3 has none");
    let want = tree_files(&src);

    // s3cmd, path-style, Signature V4.
    let cfg = work.path().join("s3cfg");
    std::fs::write(
        &cfg,
        format!(
            "[default]\naccess_key = {}\nsecret_key = {}\nhost_base = {addr}\nhost_bucket = {addr}\n\
             use_https = False\nsignature_v2 = False\nbucket_location = us-east-1\n",
            key.access,
            key.secret,
            addr = gateway.addr
        ),
    )
    .expect("s3cfg");
    let s3cmd = |args: &[&str]| {
        let out = Command::new("s3cmd")
            .arg("-c")
            .arg(&cfg)
            .args(args)
            .output()
            .expect("s3cmd");
        assert!(
            out.status.success(),
            "s3cmd {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    s3cmd(&["mb", "s3://trees"]);
    let src_arg = format!("{}/", src.display());
    s3cmd(&["sync", &src_arg, "s3://trees/s3cmd/"]);
    let back = work.path().join("back-s3cmd");
    s3cmd(&["sync", "s3://trees/s3cmd/", &format!("{}/", back.display())]);
    assert_eq!(tree_files(&back), want, "s3cmd's round trip");
    // A second sync finds nothing to do: the listing's ETags are the MD5s.
    s3cmd(&["sync", "--dry-run", &src_arg, "s3://trees/s3cmd/"]);

    // rclone, configured from the environment.
    let rclone = |args: &[&str]| {
        let out = Command::new("rclone")
            .args(args)
            .env("RCLONE_CONFIG", work.path().join("rclone.conf"))
            .env("RCLONE_CONFIG_DFS_TYPE", "s3")
            .env("RCLONE_CONFIG_DFS_PROVIDER", "Other")
            .env("RCLONE_CONFIG_DFS_ACCESS_KEY_ID", &key.access)
            .env("RCLONE_CONFIG_DFS_SECRET_ACCESS_KEY", &key.secret)
            .env("RCLONE_CONFIG_DFS_ENDPOINT", gateway.url())
            .env("RCLONE_CONFIG_DFS_REGION", "us-east-1")
            // rclone's S3 client cannot take a CA bundle over plain HTTP.
            .env_remove("AWS_CA_BUNDLE")
            .output()
            .expect("rclone");
        assert!(
            out.status.success(),
            "rclone {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let src_s = src.display().to_string();
    rclone(&["sync", &src_s, "dfs:trees/rclone"]);
    rclone(&["check", &src_s, "dfs:trees/rclone"]);
    let back = work.path().join("back-rclone");
    rclone(&["sync", "dfs:trees/rclone", &back.display().to_string()]);
    assert_eq!(tree_files(&back), want, "rclone's round trip");
    // Both copies are files on the volume, the same through a mount.
    let mount = TestMount::start(&cluster.meta_addr(), &[]);
    assert_eq!(tree_files(&mount.path.join("trees/rclone")), want);
    assert_eq!(tree_files(&mount.path.join("trees/s3cmd")), want);
    drop(mount);
}

/// HAProxy as packaging/haproxy/dfs-gateway.cfg sets it up, in front of
/// two gateways on this machine's ports.
fn haproxy_config(front: u16, stats: u16, gateways: &[&str]) -> String {
    let shipped = include_str!("../../packaging/haproxy/dfs-gateway.cfg");
    let mut out = String::new();
    for line in shipped.lines() {
        let t = line.trim();
        if t.starts_with("log ") || t.starts_with("server gateway") {
            continue;
        }
        if t == "bind :80" {
            out.push_str(&format!("    bind 127.0.0.1:{front}\n"));
            continue;
        }
        if t == "bind 127.0.0.1:8404" {
            out.push_str(&format!("    bind 127.0.0.1:{stats}\n"));
            continue;
        }
        out.push_str(line);
        out.push('\n');
        if t == "http-reuse safe" {
            for (i, g) in gateways.iter().enumerate() {
                out.push_str(&format!("    server gateway{} {g} check\n", i + 1));
            }
        }
    }
    out
}

#[test]
fn two_gateways_behind_haproxy_survive_one_dying() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    let mut first = Gateway::start(&cluster, &[]);
    let second = Gateway::start(&cluster, &[]);
    let key = add_key(&cluster, 0, 0, &[]);
    let (front, stats) = (free_port(), free_port());
    let work = tempfile::tempdir().expect("tempdir");
    let cfg = work.path().join("haproxy.cfg");
    std::fs::write(
        &cfg,
        haproxy_config(front, stats, &[&first.addr, &second.addr]),
    )
    .expect("cfg");
    let check = Command::new("haproxy")
        .arg("-c")
        .arg("-f")
        .arg(&cfg)
        .output()
        .expect("haproxy -c");
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stderr)
    );
    let mut haproxy = Proc {
        child: Some(
            Command::new("haproxy")
                .arg("-db")
                .arg("-f")
                .arg(&cfg)
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(work.path().join("haproxy.log")).expect("log"))
                .spawn()
                .expect("haproxy"),
        ),
        name: "haproxy".into(),
    };
    let url = format!("http://127.0.0.1:{front}");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while curl_status(&[&format!("{url}/health")]).0 != 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "HAProxy never answered"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let s3 = Aws {
        url: url.clone(),
        key: &key,
    };
    s3.ok(&["s3api", "create-bucket", "--bucket", "many"]);

    // A client putting 300 objects through HAProxy, one after another,
    // with the SDK's retries (a PUT is idempotent).
    const OBJECTS: usize = 300;
    let script = format!(
        "import boto3, sys\n\
         from botocore.client import Config\n\
         c = boto3.client('s3', endpoint_url='{url}', aws_access_key_id='{}', \
         aws_secret_access_key='{}', region_name='us-east-1', \
         config=Config(retries={{'max_attempts': 10, 'mode': 'standard'}}))\n\
         for i in range({OBJECTS}):\n\
         \x20   c.put_object(Bucket='many', Key='o%04d' % i, Body=(b'object %d ' % i) * 300)\n\
         \x20   print(i, flush=True)\n",
        key.access, key.secret
    );
    let mut client = Command::new(tool("python3"))
        .args(["-c", &script])
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(work.path().join("client.log")).expect("log"))
        .spawn()
        .expect("client");
    // Kill the first gateway once the client is under way.
    wait_for_line(&mut client, "50", Duration::from_secs(120)).expect("50 objects put");
    first.proc.kill();
    let status = client.wait().expect("client");
    assert!(
        status.success(),
        "the client stopped: {}",
        std::fs::read_to_string(work.path().join("client.log")).unwrap_or_default()
    );
    // HAProxy marks it down by its health check (two failed checks a
    // second apart).
    let state = |name: &str| {
        let csv = Command::new("curl")
            .args(["-sf", &format!("http://127.0.0.1:{stats}/stats;csv")])
            .output()
            .expect("stats");
        String::from_utf8_lossy(&csv.stdout)
            .lines()
            .find(|l| l.starts_with(&format!("dfs_gateways,{name},")))
            .and_then(|l| l.split(',').nth(17))
            .unwrap_or_default()
            .to_string()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while !state("gateway1").starts_with("DOWN") {
        assert!(
            std::time::Instant::now() < deadline,
            "HAProxy still has gateway1 {}",
            state("gateway1")
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(state("gateway2"), "UP");
    // Nothing acknowledged was lost.
    let mount = TestMount::start(&cluster.meta_addr(), &[]);
    for i in 0..OBJECTS {
        let path = mount.path.join(format!("many/o{i:04}"));
        let want = format!("object {i} ").repeat(300);
        assert_eq!(
            std::fs::read(&path).ok(),
            Some(want.into_bytes()),
            "{}",
            path.display()
        );
    }
    drop(mount);
    haproxy.kill();
    drop(second);
}

#[test]
fn the_web_page_signs_in_uploads_lists_and_downloads() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    let gateway = Gateway::start(&cluster, &[]);
    let key = add_key(&cluster, 0, 0, &[]);
    let s3 = Aws {
        url: gateway.url(),
        key: &key,
    };
    s3.ok(&["s3api", "create-bucket", "--bucket", "web"]);
    s3.ok(&["s3api", "create-bucket", "--bucket", "photos"]);
    let work = tempfile::tempdir().expect("tempdir");
    let upload = write_random(work.path(), "report-2026.pdf", 300_000, 11);
    let downloads = work.path().join("downloads");
    std::fs::create_dir(&downloads).expect("downloads");
    // Where the screenshot goes: DFS_TEST_SCREENSHOT (README's picture is
    // made that way), else the test's own directory.
    let shot = std::env::var_os("DFS_TEST_SCREENSHOT")
        .map(PathBuf::from)
        .unwrap_or_else(|| work.path().join("page.png"));
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/web/drive_page.py");
    let out = Command::new(tool("python3"))
        .arg(script)
        .arg(gateway.url())
        .args([&key.access, &key.secret, "web"])
        .arg(&upload)
        .arg(&downloads)
        .arg(&shot)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "the page: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::read(downloads.join("report-2026.pdf")).ok(),
        std::fs::read(&upload).ok(),
        "downloaded through the page"
    );
    // The upload is an object like any other, with its content type.
    let head = s3.json(&[
        "s3api",
        "head-object",
        "--bucket",
        "web",
        "--key",
        "report-2026.pdf",
    ]);
    assert_eq!(
        head["ContentType"].as_str(),
        Some("application/pdf"),
        "{head}"
    );
    assert!(std::fs::metadata(&shot)
        .map(|m| m.len() > 1000)
        .unwrap_or(false));
    // The page itself is served unsigned, with a policy against framing.
    let (code, head) = curl_status(&[&format!("{}/ui", gateway.url())]);
    assert_eq!(code, 200);
    assert!(
        head.to_ascii_lowercase().contains("frame-ancestors 'none'"),
        "{head}"
    );
}

#[test]
fn keys_come_and_go_and_https_and_slow_clients_are_handled() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    let work = tempfile::tempdir().expect("tempdir");
    let (cert, key_file) = (work.path().join("https.crt"), work.path().join("https.key"));
    let made = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=127.0.0.1",
        ])
        .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
        .arg(&key_file)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let gateway = Gateway::start(
        &cluster,
        &[
            "--https-cert",
            cert.to_str().unwrap_or_default(),
            "--https-key",
            key_file.to_str().unwrap_or_default(),
            "--key-cache-secs",
            "1",
            "--header-timeout",
            "2",
        ],
    );
    let key = add_key(&cluster, 0, 0, &["--description", "short-lived"]);

    // HTTPS, with the certificate the client is given.
    let https = format!("https://{}", gateway.addr);
    let s3 = Aws {
        url: https.clone(),
        key: &key,
    };
    let with_ca = |args: &[&str]| {
        let mut all = vec!["--ca-bundle", cert.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        s3.ok(&all)
    };
    with_ca(&["s3api", "create-bucket", "--bucket", "tls"]);
    with_ca(&["s3api", "list-buckets"]);
    let (code, _) = curl_status(&[&format!("http://{}/health", gateway.addr)]);
    assert_eq!(code, 0, "plain HTTP on the HTTPS port is no answer");
    let (code, _) = curl_status(&[
        "--cacert",
        cert.to_str().unwrap_or_default(),
        &format!("{https}/health"),
    ]);
    assert_eq!(code, 200);

    // The key is listed without its secret, and removed keys stop working
    // once the gateway's cache of them expires.
    let out = dfs_cmd("dfs")
        .args(["keys", "list", "--meta", &cluster.meta_addr(), "--json"])
        .output()
        .expect("dfs keys list");
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let row = listed
        .as_array()
        .and_then(|a| a.iter().find(|k| k["access_key"] == key.access.as_str()))
        .cloned()
        .unwrap_or_default();
    assert_eq!(row["description"], "short-lived", "{listed}");
    assert!(
        row.get("secret_key").is_none(),
        "a listing shows no secret: {listed}"
    );
    let out = dfs_cmd("dfs")
        .args([
            "keys",
            "remove",
            "--meta",
            &cluster.meta_addr(),
            &key.access,
        ])
        .output()
        .expect("dfs keys remove");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::thread::sleep(Duration::from_millis(1500));
    let refused = s3.run(&[
        "--ca-bundle",
        cert.to_str().unwrap_or_default(),
        "s3api",
        "list-buckets",
    ]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("InvalidAccessKeyId"));

    // A client that starts a request and never finishes its headers is cut
    // off after --header-timeout, without holding anything.
    use std::io::{Read, Write};
    let tcp = std::net::TcpStream::connect(&gateway.addr).expect("connect");
    let mut tls_less = tcp;
    tls_less
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    tls_less
        .write_all(b"\x16\x03\x01")
        .expect("a TLS record never finished");
    let started = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tls_less.read(&mut buf).unwrap_or(0);
    assert_eq!(n, 0, "the connection was closed");
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "closed after {:?}",
        started.elapsed()
    );
}

#[test]
fn abandoned_puts_and_uploads_are_swept() {
    let cluster = TestCluster::start(3, 3);
    cluster.wait_servers_up(9);
    // Leftovers older than 3 s go, looked for every second.
    let gateway = Gateway::start(
        &cluster,
        &[
            "--sweep-tmp-after",
            "3",
            "--sweep-uploads-after",
            "3",
            "--sweep-every",
            "1",
        ],
    );
    let root_key = add_key(&cluster, 0, 0, &[]);
    let s3 = Aws {
        url: gateway.url(),
        key: &root_key,
    };
    let mount = TestMount::start(&cluster.meta_addr(), &[]);
    let m = &mount.path;
    s3.ok(&["s3api", "create-bucket", "--bucket", "sweep"]);

    // What a gateway that died mid-PUT leaves: a file in /.s3/tmp.
    let tmp = m.join(".s3/tmp");
    std::fs::write(
        tmp.join("0123456789abcdef0123456789abcdef"),
        vec![7u8; 200_000],
    )
    .expect("write a stale tmp file");
    // An upload started, one part sent, then forgotten.
    let created = s3.json(&[
        "s3api",
        "create-multipart-upload",
        "--bucket",
        "sweep",
        "--key",
        "forgotten.bin",
    ]);
    let upload_id = created["UploadId"].as_str().expect("upload id").to_string();
    let work = tempfile::tempdir().expect("tempdir");
    let part = write_random(work.path(), "part", 100_000, 9);
    s3.ok(&[
        "s3api",
        "upload-part",
        "--bucket",
        "sweep",
        "--key",
        "forgotten.bin",
        "--upload-id",
        &upload_id,
        "--part-number",
        "1",
        "--body",
        part.to_str().unwrap_or_default(),
    ]);
    let listed = s3.json(&["s3api", "list-multipart-uploads", "--bucket", "sweep"]);
    assert!(listed.to_string().contains(&upload_id), "{listed}");

    // Objects written meanwhile are not leftovers.
    let kept = write_random(work.path(), "kept", 50_000, 10);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        s3.ok(&[
            "s3",
            "cp",
            kept.to_str().unwrap_or_default(),
            "s3://sweep/kept.bin",
        ]);
        let tmp_left = std::fs::read_dir(&tmp).expect("read /.s3/tmp").count();
        let uploads_left = std::fs::read_dir(m.join(".s3/multipart"))
            .expect("read /.s3/multipart")
            .count();
        if tmp_left == 0 && uploads_left == 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "after 30 s, /.s3/tmp holds {tmp_left} and /.s3/multipart {uploads_left} entries: {}",
            cluster.log("gateway")
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let listed = s3.json(&["s3api", "list-multipart-uploads", "--bucket", "sweep"]);
    assert!(!listed.to_string().contains(&upload_id), "{listed}");
    s3.fails(
        &[
            "s3api",
            "list-parts",
            "--bucket",
            "sweep",
            "--key",
            "forgotten.bin",
            "--upload-id",
            &upload_id,
        ],
        "NoSuchUpload",
    );
    let got = work.path().join("got");
    s3.ok(&[
        "s3",
        "cp",
        "s3://sweep/kept.bin",
        got.to_str().unwrap_or_default(),
    ]);
    assert_eq!(md5_hex(&got), md5_hex(&kept));
    assert_eq!(
        std::fs::read(m.join("sweep/kept.bin")).expect("read through the mount"),
        std::fs::read(&kept).expect("read the original")
    );
    drop(mount);
}
