//! The status socket: connect, read the daemon's status as JSON to EOF.

use std::path::Path;
use std::time::Instant;

use tokio::io::AsyncWriteExt;
use tokio::net::UnixListener;

use super::{DaemonError, Shared};

/// Binds the socket at `path` (its directory created, a stale socket replaced), mode 0660.
pub(super) fn bind(path: &Path) -> Result<UnixListener, DaemonError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|source| DaemonError::Dir { path: dir.to_owned(), source })?;
    }
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)
        .map_err(|source| DaemonError::Bind { path: path.to_owned(), source })?;
    set_mode(path, 0o660);
    tracing::info!(socket = %path.display(), "status socket listening");
    Ok(listener)
}

/// Answers every connection with a snapshot of the status, until the daemon stops.
pub(super) async fn serve(listener: UnixListener, shared: Shared, started: Instant) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            continue;
        };
        let mut snapshot = shared.read().await.clone();
        snapshot.uptime_s = started.elapsed().as_secs();
        let mut body = serde_json::to_vec_pretty(&snapshot).unwrap_or_default();
        body.push(b'\n');
        tokio::spawn(async move {
            let _ = conn.write_all(&body).await;
            let _ = conn.shutdown().await;
        });
    }
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}
