//! Certificates made by [`super::ca`], served and dialled over loopback.

use super::*;
use crate::error::DfsError;
use dfs_proto::chunks_client::ChunksClient;
use dfs_proto::chunks_server::{Chunks, ChunksServer};
use dfs_proto::{
    CheckShardsReply, CheckShardsRequest, DeleteShardsReply, DeleteShardsRequest, Empty,
    GetShardReply, GetShardsReply, GetShardsRequest, ListShardsReply, ListShardsRequest,
    PutShardsRequest, ServerUsage, ShardKey,
};
use tonic::{Request, Response, Status};

/// Answers `Usage`, `PutShards` and `DeleteShards`; `GetShard` says which
/// identity called.
struct Echo;

#[tonic::async_trait]
impl Chunks for Echo {
    async fn put_shards(&self, _: Request<PutShardsRequest>) -> Result<Response<Empty>, Status> {
        Ok(Response::new(Empty {}))
    }
    async fn get_shard(
        &self,
        request: Request<ShardKey>,
    ) -> Result<Response<GetShardReply>, Status> {
        // The handler sees who called (for caps finer than a role).
        let name = request
            .extensions()
            .get::<PeerInfo>()
            .and_then(|p| p.identity.as_ref())
            .map(|i| i.to_uri())
            .unwrap_or_default();
        Ok(Response::new(GetShardReply {
            data: name.into_bytes().into(),
        }))
    }
    async fn get_shards(
        &self,
        _: Request<GetShardsRequest>,
    ) -> Result<Response<GetShardsReply>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn delete_shards(
        &self,
        _: Request<DeleteShardsRequest>,
    ) -> Result<Response<DeleteShardsReply>, Status> {
        Ok(Response::new(DeleteShardsReply::default()))
    }
    async fn list_shards(
        &self,
        _: Request<ListShardsRequest>,
    ) -> Result<Response<ListShardsReply>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn check_shards(
        &self,
        _: Request<CheckShardsRequest>,
    ) -> Result<Response<CheckShardsReply>, Status> {
        Err(Status::unimplemented("test"))
    }
    async fn usage(&self, _: Request<Empty>) -> Result<Response<ServerUsage>, Status> {
        Ok(Response::new(ServerUsage::default()))
    }
}

fn cluster_ca(dir: &Path) {
    ca::init(dir).unwrap();
    for role in Role::ALL {
        ca::issue(
            dir,
            &Identity::new(role, &format!("{role}-1")),
            dir,
            role.as_str(),
            &[],
            None,
        )
        .unwrap();
    }
}

async fn serve(security: Security) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let incoming = security.incoming(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .layer(AuthorizeLayer)
            .add_service(ChunksServer::new(Echo))
            .serve_with_incoming(incoming),
    );
    address
}

async fn client(
    security: &Security,
    address: &str,
) -> Result<ChunksClient<tonic::transport::Channel>, String> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{address}"))
        .unwrap()
        .connect_with_connector(security.connector(Role::Server))
        .await
        .map_err(|e| format!("{e:?}"))?;
    Ok(ChunksClient::new(channel))
}

/// Whether `security` gets an answer to `Usage` from `address` (a refused
/// handshake and a refused request both count as no).
async fn served(security: &Security, address: &str) -> Result<(), String> {
    let mut c = client(security, address).await?;
    c.usage(Empty {})
        .await
        .map(|_| ())
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn roles_reach_only_their_methods() {
    let dir = tempfile::tempdir().unwrap();
    cluster_ca(dir.path());
    let server = Security::Tls(Arc::new(Tls::load(dir.path(), Role::Server).unwrap()));
    let address = serve(server).await;

    let as_client = Security::Tls(Arc::new(Tls::load(dir.path(), Role::Client).unwrap()));
    let mut c = client(&as_client, &address).await.unwrap();
    let reply = c.get_shard(ShardKey::default()).await.unwrap().into_inner();
    assert_eq!(&reply.data[..], b"dfs://client/client-1");
    let refused = c
        .delete_shards(DeleteShardsRequest::default())
        .await
        .unwrap_err();
    assert_eq!(DfsError::from(refused).errno, libc::EACCES);

    let as_meta = Security::Tls(Arc::new(Tls::load(dir.path(), Role::Meta).unwrap()));
    let mut m = client(&as_meta, &address).await.unwrap();
    m.delete_shards(DeleteShardsRequest::default())
        .await
        .unwrap();
}

#[tokio::test]
async fn strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    cluster_ca(dir.path());
    let other = tempfile::tempdir().unwrap();
    cluster_ca(other.path());
    let address = serve(Security::Tls(Arc::new(
        Tls::load(dir.path(), Role::Server).unwrap(),
    )))
    .await;

    // A client of another cluster's CA: the server refuses its certificate.
    let stranger = Security::Tls(Arc::new(Tls::load(other.path(), Role::Client).unwrap()));
    assert!(
        served(&stranger, &address).await.is_err(),
        "a certificate from another CA was let in"
    );

    // No TLS at all.
    assert!(
        served(&Security::Plaintext, &address).await.is_err(),
        "a plaintext client was let in"
    );

    // A dfs-meta certificate answering where a chunk server was expected:
    // the caller refuses it by name.
    let meta_address = serve(Security::Tls(Arc::new(
        Tls::load(dir.path(), Role::Meta).unwrap(),
    )))
    .await;
    let as_client = Security::Tls(Arc::new(Tls::load(dir.path(), Role::Client).unwrap()));
    assert!(client(&as_client, &meta_address).await.is_err());
}

#[test]
fn loading_checks_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let err = Tls::load(dir.path(), Role::Client).unwrap_err().to_string();
    assert!(err.contains("dfs ca issue"), "{err}");
    cluster_ca(dir.path());
    // A server certificate is not a client's.
    std::fs::copy(dir.path().join("server.crt"), dir.path().join("client.crt")).unwrap();
    std::fs::copy(dir.path().join("server.key"), dir.path().join("client.key")).unwrap();
    let err = Tls::load(dir.path(), Role::Client).unwrap_err().to_string();
    assert!(
        err.contains("is a server certificate; this program needs a client one"),
        "{err}"
    );
    // Keys are private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second CA in the same place is refused.
    assert!(ca::init(dir.path()).is_err());
}

#[test]
fn issued_certificates_carry_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    ca::init(dir.path()).unwrap();
    let mut id = Identity::new(Role::Client, "web");
    id.caps.subtree = Some("/srv/www".into());
    id.caps.read_only = true;
    ca::issue(
        dir.path(),
        &id,
        dir.path(),
        "web",
        &["10.0.0.5".into(), "host.example".into()],
        None,
    )
    .unwrap();
    let der = |stem: &str| {
        let pem = std::fs::read(dir.path().join(format!("{stem}.crt"))).unwrap();
        CertificateDer::pem_slice_iter(&pem)
            .next()
            .unwrap()
            .unwrap()
    };
    assert_eq!(Identity::from_certificate(&der("web")).unwrap(), id);
    // Renewed for the same key: same key id, as a chunk server's
    // registration needs; a new key is another id.
    let old_key = dir.path().join("web.key");
    ca::issue(dir.path(), &id, dir.path(), "renewed", &[], Some(&old_key)).unwrap();
    ca::issue(dir.path(), &id, dir.path(), "other", &[], None).unwrap();
    let key_id = |stem: &str| identity::public_key_id(&der(stem)).unwrap();
    assert_eq!(key_id("web"), key_id("renewed"));
    assert_ne!(key_id("web"), key_id("other"));
}

#[tokio::test]
async fn revoked_certificates_are_refused_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    cluster_ca(dir.path());
    // A second client, elsewhere, that stays good.
    let good = tempfile::tempdir().unwrap();
    ca::issue(
        dir.path(),
        &Identity::new(Role::Client, "good"),
        good.path(),
        "client",
        &[],
        None,
    )
    .unwrap();
    let (crl, who) = ca::revoke(dir.path(), &dir.path().join("client.crt")).unwrap();
    assert_eq!(who.name, "client-1");
    assert!(crl.exists());
    // Twice: listed once; a certificate of another CA: refused.
    ca::revoke(dir.path(), &dir.path().join("client.crt")).unwrap();
    let listed = std::fs::read_to_string(dir.path().join("revoked")).unwrap();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    let other = tempfile::tempdir().unwrap();
    cluster_ca(other.path());
    let err = ca::revoke(dir.path(), &other.path().join("client.crt")).unwrap_err();
    assert!(err.to_string().contains("not issued by"), "{err}");

    // The server (whose TLS directory has crl.pem) refuses the revoked
    // client and serves the other.
    let address = serve(Security::Tls(Arc::new(
        Tls::load(dir.path(), Role::Server).unwrap(),
    )))
    .await;
    let revoked = Security::Tls(Arc::new(Tls::load(dir.path(), Role::Client).unwrap()));
    assert!(
        served(&revoked, &address).await.is_err(),
        "a revoked client was let in"
    );
    let kept = Security::Tls(Arc::new(Tls::load(good.path(), Role::Client).unwrap()));
    served(&kept, &address).await.unwrap();

    // A client that has the list refuses a revoked server.
    ca::revoke(dir.path(), &dir.path().join("server.crt")).unwrap();
    let server_without_list = tempfile::tempdir().unwrap();
    for f in ["ca.crt", "server.crt", "server.key"] {
        std::fs::copy(dir.path().join(f), server_without_list.path().join(f)).unwrap();
    }
    let address = serve(Security::Tls(Arc::new(
        Tls::load(server_without_list.path(), Role::Server).unwrap(),
    )))
    .await;
    std::fs::copy(dir.path().join("crl.pem"), good.path().join("crl.pem")).unwrap();
    let checking = Security::Tls(Arc::new(Tls::load(good.path(), Role::Client).unwrap()));
    assert!(
        served(&checking, &address).await.is_err(),
        "a revoked server was trusted"
    );
    // A damaged list stops the program with its path.
    std::fs::write(
        good.path().join("crl.pem"),
        b"-----BEGIN X509 CRL-----\nxx\n",
    )
    .unwrap();
    let err = Tls::load(good.path(), Role::Client)
        .unwrap_err()
        .to_string();
    assert!(err.contains("crl.pem"), "{err}");
}
